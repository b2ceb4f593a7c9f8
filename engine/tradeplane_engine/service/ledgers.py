"""A ledger process: runs a replica of each ledger shard it is given (docs/ledger.md).

Like an engine process for markets: each shard's replicas elect a leader through the
lease bucket, the others stand by with a warm state, and ``/livez`` and ``/readyz``
answer for every shard the process runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from tradeplane_engine.access import Access
from tradeplane_engine.connection import connect
from tradeplane_engine.service.health import DEFAULT_HOST, bound_port, start_health_server
from tradeplane_engine.service.lease import leases_bucket
from tradeplane_engine.service.ledger import LedgerService
from tradeplane_engine.store.database import open_database
from tradeplane_engine.streams import StreamSettings, markets_bucket

log = logging.getLogger(__name__)


async def run_ledgers(servers: str, shards: list[int], total: int,
                      settings: StreamSettings | None = None, replica: str | None = None, *,
                      health_port: int | None = None, health_host: str = DEFAULT_HOST,
                      access: Access | None = None, dsn: str | None = None) -> None:
    """Run a replica of each of ``shards`` (of ``total``) until cancelled; with a DSN,
    each starts from its shard's newest snapshot."""
    if total < 1 or any(not 0 <= shard < total for shard in shards):
        raise ValueError(f"shards {shards} of {total}: each must be 0 to {total - 1}")
    settings = settings or StreamSettings()
    services: list[LedgerService] = []
    health = None
    if health_port is not None:
        health = await start_health_server(health_host, health_port, services)
        log.info("health endpoint on %s:%d", health_host, bound_port(health))
    nc = await connect(servers, f"tradeplane-ledger:{','.join(map(str, shards))}", "ledger",
                       access)
    pool = await open_database(dsn, size=2) if dsn else None
    try:
        markets = await markets_bucket(nc.jetstream(), settings)
        leases = await leases_bucket(nc.jetstream(), settings.replicas, settings.memory)
        name = replica or f"{socket.gethostname()}-{os.getpid()}"
        services.extend(LedgerService(nc, shard, total, settings, replica=name, leases=leases,
                                      pool=pool)
                        for shard in shards)
        async with asyncio.TaskGroup() as group:
            for service in services:
                group.create_task(service.run(markets), name=service.name)
    finally:
        if pool is not None:
            await pool.close()
        await nc.drain()
        if health is not None:
            health.close()
            await health.wait_closed()
