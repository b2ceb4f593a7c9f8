"""Which database errors mean "PostgreSQL is not there right now" (wait and retry), as
opposed to errors in what we asked of it (a bug, or a duplicate: handled by callers)."""

from __future__ import annotations

import asyncpg

DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection closed under us
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.InternalClientError,  # a connection left mid-operation by a lost server
)
