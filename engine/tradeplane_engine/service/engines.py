"""An engine process: runs the markets it is given, each from the markets bucket.

Markets spread over engine processes (``--market`` names the ones a process runs), so
capacity grows by adding processes and nodes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from tradeplane_engine.access import Access
from tradeplane_engine.connection import connect
from tradeplane_engine.service.health import DEFAULT_HOST, bound_port, start_health_server
from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.service.market import MarketService
from tradeplane_engine.service.shutdown import leave
from tradeplane_engine.store.database import open_database
from tradeplane_engine.streams import StreamSettings, market_definition, markets_bucket

log = logging.getLogger(__name__)


async def run_engines(servers: str, markets: list[str],
                      settings: StreamSettings | None = None, dsn: str | None = None,
                      replica: str | None = None, *, health_port: int | None = None,
                      health_host: str = DEFAULT_HOST, stop: asyncio.Event | None = None,
                      access: Access | None = None) -> None:
    """Run a replica of each named market until cancelled, or until ``stop`` is set: it
    leads or stands by, as the market's lease decides. With a DSN, start from the
    markets' snapshots.

    When ``stop`` is set (the process got SIGTERM), each market this process leads is
    handed to a caught-up standby first (``shutdown.leave``), then everything stops.

    With a ``health_port``, serve the Kubernetes probes (``/livez``, ``/readyz``) from the
    start, so the pod is alive, though not ready, while its markets are still awaited."""
    services: list[MarketService] = []
    health = None
    if health_port is not None:
        health = await start_health_server(health_host, health_port, services)
        log.info("health endpoint on %s:%d", health_host, bound_port(health))
    try:
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(_run_markets(
                servers, markets, settings or StreamSettings(), dsn, replica, services, access))
            if stop is not None:
                group.create_task(_leave_on(stop, services, serving))
    finally:
        if health is not None:
            health.close()
            await health.wait_closed()


async def _leave_on(stop: asyncio.Event, services: list[MarketService],
                    serving: asyncio.Task[None]) -> None:
    await stop.wait()
    log.info("stopping: handing over what this process leads")
    await asyncio.gather(*(leave(service) for service in services))
    serving.cancel()


async def _run_markets(servers: str, markets: list[str], settings: StreamSettings,
                       dsn: str | None, replica: str | None,
                       services: list[MarketService], access: Access | None) -> None:
    """``run_engines`` itself; ``services`` receives the markets' services once made."""
    nc = await connect(servers, f"tradeplane-engine:{','.join(markets)}", "engine", access)
    pool = await open_database(dsn, size=2) if dsn else None
    try:
        kv = await markets_bucket(nc.jetstream(), settings)
        definitions = [await market_definition(kv, market) for market in markets]
        leases = await leases_bucket(nc.jetstream(), settings.replicas, settings.memory)
        statuses = await replicas_bucket(nc.jetstream(), settings.replicas, settings.memory)
        name = replica or f"{socket.gethostname()}-{os.getpid()}"
        services.extend(MarketService(nc, definition, settings, pool=pool, replica=name,
                                      leases=leases, replicas=statuses)
                        for definition in definitions)
        async with asyncio.TaskGroup() as group:
            for service in services:
                group.create_task(service.run(), name=f"market {service.market}")
    finally:
        if pool is not None:
            await pool.close()
        await nc.drain()
