"""The database as every process opens it: a pool on a migrated database, each of its
connections prepared for the recorder, and the DSN without its password for logs.

It also says which database errors mean "PostgreSQL is not there right now" (wait and
retry: ``DATABASE_UNAVAILABLE``, ``until_available``, ``with_connection``), as opposed to
errors in what we asked of it (a bug, or a duplicate: handled by callers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tradeplane_engine.store.migrate import migrate

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection closed under us
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.InternalClientError,  # a connection left mid-operation by a lost server
)


async def until_available[T](work: Callable[[], Awaitable[T]], what: str) -> T:
    """``await work()``, waiting out PostgreSQL outages with a capped backoff."""
    delay = 0.1
    while True:
        try:
            return await work()
        except DATABASE_UNAVAILABLE as exc:
            log.warning("%s waits for PostgreSQL (%s); retrying in %.1f s", what,
                        type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


async def with_connection[T](pool: asyncpg.Pool,
                             work: Callable[[asyncpg.Connection], Awaitable[T]],
                             what: str) -> T:
    """``work(connection)`` on a pooled connection, waiting out outages."""
    async def attempt() -> T:
        async with pool.acquire() as connection:
            return await work(connection)

    return await until_available(attempt, what)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


async def prepare_connection(connection: asyncpg.Connection) -> None:
    """Per connection: the temporary table through which order changes are applied."""
    await connection.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS order_changes ("
        " market text, order_id bigint, status text, filled bigint, remaining bigint,"
        " price bigint, quantity bigint, reason text, updated_sequence bigint"
        ") ON COMMIT DELETE ROWS")


async def open_database(dsn: str, *, size: int = 4) -> asyncpg.Pool:
    """A pool on a migrated database; waits for PostgreSQL to be reachable."""
    pool: asyncpg.Pool = await until_available(
        lambda: asyncpg.create_pool(dsn, min_size=1, max_size=size, init=prepare_connection),
        f"the database at {redact(dsn)}")
    async with pool.acquire() as connection:
        applied = await migrate(connection)
    if applied:
        log.info("database %s: applied migrations %s", redact(dsn), applied)
    return pool
