"""A gateway process: follow the markets bucket and serve requests until cancelled."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.access import Access
from tradeplane_engine.connection import connect
from tradeplane_engine.wire import MARKETS_BUCKET
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.service import Gateway
from tradeplane_shared.health import ServiceHealth

log = logging.getLogger(__name__)


async def open_markets_bucket(js: JetStreamContext) -> KeyValue:
    """The markets bucket, once whoever defines markets (``up``, the operator) made it."""
    while True:
        try:
            return await js.key_value(MARKETS_BUCKET)
        except BucketNotFoundError:
            log.info("waiting for the %s bucket to be created", MARKETS_BUCKET)
            await asyncio.sleep(0.5)


async def run_gateway(servers: str, started: asyncio.Event | None = None,
                      access: Access | None = None,
                      health: ServiceHealth | None = None, ledger_shards: int = 0) -> None:
    """Serve order entry until cancelled; ``started`` is set once requests are served.
    ``health`` watches the connection and is told when requests are served. With
    ``ledger_shards``, every order and replace is funded by the ledger first."""
    nc = await connect(servers, "tradeplane-gateway", "gateway", access)
    if health is not None:
        health.watch("nats", nc)
    try:
        kv = await open_markets_bucket(nc.jetstream())
        markets = MarketDirectory()
        gateway = Gateway(nc, markets, ledger_shards=ledger_shards)
        async with asyncio.TaskGroup() as group:
            group.create_task(markets.follow(kv), name="markets")
            await gateway.start()
            if started is not None:
                started.set()
            if health is not None:
                health.started.set()
            try:
                await asyncio.Event().wait()
            finally:
                await gateway.stop()
    finally:
        await nc.drain()
