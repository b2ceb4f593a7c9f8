"""Versioned SQL migrations, applied at start by every process that needs the schema.

Migrations are the numbered ``.sql`` files beside this module. ``migrate()`` applies
the missing ones in one transaction that first takes a transaction-scoped advisory
lock, so any number of processes may start at once: one applies, the others wait and
then find nothing left to do. A fresh database and an upgraded one run the same files
in the same order, so they end identical (a test compares their schemas).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

LOCK_KEY = 0x7472616465706C61
"""The advisory lock that serialises migrations ("tradepla" in ASCII)."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration, in version order."""
    found = []
    for entry in resources.files("tradeplane_engine.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3...; found {versions}")
    return found


async def migrate(connection: asyncpg.Connection, *, up_to: int | None = None) -> list[int]:
    """Apply what is missing (up to a version, for tests); the versions applied now."""
    applied_now = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        applied = {row["version"] for row in
                   await connection.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in applied or (up_to is not None and migration.version > up_to):
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version, migration.name)
            applied_now.append(migration.version)
    return applied_now
