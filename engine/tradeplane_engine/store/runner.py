"""A recorder process: for its markets, the recorder, the snapshotter and the history
queries, on one NATS connection and one PostgreSQL pool.

The DSN comes from the environment (``TRADEPLANE_POSTGRES_DSN``), never from the
command line, so that credentials do not show in process listings; logs show it
without its password (``redact``).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tradeplane_engine.service.runner import connect, market_definition
from tradeplane_engine.service.streams import StreamSettings, markets_bucket
from tradeplane_engine.store.errors import until_available
from tradeplane_engine.store.migrate import migrate
from tradeplane_engine.store.queries import History
from tradeplane_engine.store.recorder import Recorder, prepare_connection
from tradeplane_engine.store.snapshots import Snapshotter

log = logging.getLogger(__name__)


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


async def run_recorders(servers: str, markets: list[str], dsn: str,
                        settings: StreamSettings | None = None) -> None:
    """Record, snapshot and answer history queries for the named markets until cancelled."""
    nc = await connect(servers, f"tradeplane-recorder:{','.join(markets)}")
    pool = await open_database(dsn)
    try:
        kv = await markets_bucket(nc.jetstream(), settings or StreamSettings())
        definitions = [await market_definition(kv, market) for market in markets]
        histories = [History(nc, pool, definition) for definition in definitions]
        for history in histories:
            await history.start()
        async with asyncio.TaskGroup() as group:
            for definition in definitions:
                group.create_task(Recorder(nc, pool, definition).run(),
                                  name=f"recorder {definition.name}")
                group.create_task(Snapshotter(nc, pool, definition).run(),
                                  name=f"snapshotter {definition.name}")
    finally:
        try:
            await asyncio.wait_for(pool.close(), 5)
        except TimeoutError:
            pool.terminate()
        await nc.drain()
