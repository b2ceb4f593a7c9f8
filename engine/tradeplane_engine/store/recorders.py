"""A recorder process: for its markets, the recorder, the snapshotter and the history
queries, on one NATS connection and one PostgreSQL pool.

Its markets are either named (``--market``), each awaited in the markets bucket and
all stopped by a failure of any, or, with none named, every market in the bucket as
markets are defined and deleted (``following``), each restarted alone after a failure.
With ledger shards, each shard's journal and balances too (``ledger_recorder``).

The DSN comes from the environment (``TRADEPLANE_POSTGRES_DSN``), never from the
command line, so that credentials do not show in process listings; logs show it
without its password (``store.database.redact``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
from nats.aio.client import Client
from nats.js.kv import KeyValue

from tradeplane_engine.access import Access
from tradeplane_engine.connection import connect
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.following import RecordedMarkets
from tradeplane_engine.store.ledger_recorder import LedgerRecorder
from tradeplane_engine.store.ledger_snapshots import LedgerSnapshotter
from tradeplane_engine.store.queries import History
from tradeplane_engine.store.recorder import Recorder
from tradeplane_engine.store.snapshots import Snapshotter
from tradeplane_engine.streams import StreamSettings, market_definition, markets_bucket
from tradeplane_shared.health import ServiceHealth

log = logging.getLogger(__name__)

FOLLOWING = "*"
"""The NATS connection name's market part for a recorder that follows the bucket (``*``
cannot be part of a market name, so the name says "every market")."""


async def run_recorders(servers: str, markets: Sequence[str] | None, dsn: str,
                        settings: StreamSettings | None = None,
                        access: Access | None = None,
                        health: ServiceHealth | None = None,
                        ledger_shards: int = 0) -> None:
    """Record, snapshot and answer history queries until cancelled: for the named
    markets, or, with none named, for every market in the markets bucket as it comes
    and goes; and the journal of each of ``ledger_shards`` ledger shards. ``health``
    watches the connection and is told once the database is open and the markets
    bucket read."""
    name = ",".join(markets) if markets else FOLLOWING
    nc = await connect(servers, f"tradeplane-recorder:{name}", "recorder", access)
    if health is not None:
        health.watch("nats", nc)
    pool = await open_database(dsn)
    try:
        kv = await markets_bucket(nc.jetstream(), settings or StreamSettings())
        if health is not None:
            health.started.set()
        async with asyncio.TaskGroup() as group:
            for shard in range(ledger_shards):
                group.create_task(LedgerRecorder(nc, pool, shard).run(),
                                  name=f"ledger recorder {shard}")
                group.create_task(LedgerSnapshotter(nc, pool, shard, ledger_shards).run(),
                                  name=f"ledger snapshotter {shard}")
            if markets:
                group.create_task(_record_named(nc, pool, kv, markets), name="markets")
            else:
                group.create_task(RecordedMarkets(nc, pool).follow(kv), name="markets")
    finally:
        try:
            await asyncio.wait_for(pool.close(), 5)
        except TimeoutError:
            pool.terminate()
        await nc.drain()


async def _record_named(nc: Client, pool: asyncpg.Pool, kv: KeyValue,
                        markets: Sequence[str]) -> None:
    """The named markets, once each is defined; a failure of any ends them all."""
    definitions = [await market_definition(kv, market, "recorder") for market in markets]
    histories = [History(nc, pool, definition) for definition in definitions]
    for history in histories:
        await history.start()
    async with asyncio.TaskGroup() as group:
        for definition in definitions:
            group.create_task(Recorder(nc, pool, definition).run(),
                              name=f"recorder {definition.name}")
            group.create_task(Snapshotter(nc, pool, definition).run(),
                              name=f"snapshotter {definition.name}")
