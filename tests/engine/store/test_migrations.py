"""Migrations against a real PostgreSQL: idempotent, safe to run at once, and a fresh
database ends exactly like an upgraded one."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.support.exchange import run
from tradeplane_engine.store.migrate import migrate, migrations

SCHEMA = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type
       || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS what
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'view', table_name || ' ' || view_definition FROM information_schema.views
WHERE table_schema = 'public'
ORDER BY 1, 2
"""


async def schema(dsn: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [(row["kind"], row["what"]) for row in await connection.fetch(SCHEMA)]
    finally:
        await connection.close()


def test_migrations_are_numbered_and_apply_once(database: str) -> None:
    async def scenario() -> None:
        connection = await asyncpg.connect(database)
        try:
            versions = [migration.version for migration in migrations()]
            assert versions == list(range(1, len(versions) + 1))
            assert len(versions) >= 2
            assert await migrate(connection) == versions
            assert await migrate(connection) == []
            tables = {row["tablename"] for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert {"journal", "orders", "order_history", "trades", "rejections",
                    "snapshots", "markets", "schema_migrations"} <= tables
        finally:
            await connection.close()

    run(scenario())


def test_migrations_run_concurrently_are_applied_exactly_once(database: str) -> None:
    async def scenario() -> None:
        connections = [await asyncpg.connect(database) for _ in range(6)]
        try:
            results = await asyncio.gather(*(migrate(connection) for connection in connections))
            applied = [versions for versions in results if versions]
            assert len(applied) == 1
            assert applied[0] == [migration.version for migration in migrations()]
            rows = await connections[0].fetchval("SELECT count(*) FROM schema_migrations")
            assert rows == len(migrations())
        finally:
            for connection in connections:
                await connection.close()

    run(scenario())


def test_a_fresh_database_and_an_upgraded_one_end_identical(postgres_server: object,
                                                            database: str) -> None:
    async def scenario() -> None:
        base = database.rsplit("/", 1)[0]
        admin = await asyncpg.connect(base + "/postgres")
        upgraded_name = database.rsplit("/", 1)[1] + "_up"
        await admin.execute(f"CREATE DATABASE {upgraded_name}")
        try:
            fresh = await asyncpg.connect(database)
            upgraded = await asyncpg.connect(base + "/" + upgraded_name)
            try:
                await migrate(fresh)
                assert await migrate(upgraded, up_to=1) == [1]
                assert await migrate(upgraded) == list(range(2, len(migrations()) + 1))
            finally:
                await fresh.close()
                await upgraded.close()
            fresh_schema = await schema(database)
            assert fresh_schema
            assert fresh_schema == await schema(base + "/" + upgraded_name)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {upgraded_name} WITH (FORCE)")
            await admin.close()

    run(scenario())
