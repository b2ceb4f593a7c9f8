"""Which database errors mean "PostgreSQL is not there right now" (wait and retry), as
opposed to errors in what we asked of it (a bug, or a duplicate: handled by callers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

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
