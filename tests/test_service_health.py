"""The probes of the gateway, the recorder and the auth service (``/livez``, ``/readyz``
and ``/metrics`` on their metrics port), asked over real HTTP while each runs against a
real nats-server: unready until connected and started, unready while NATS is gone,
ready again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.engine.service.test_health import get, probe
from tests.support.exchange import SETTINGS, eventually, run
from tradeplane.processes import NatsServer
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.recorders import run_recorders
from tradeplane_engine.streams import markets_bucket
from tradeplane_gateway.auth import run_auth
from tradeplane_gateway.serve import run_gateway
from tradeplane_shared.health import ServiceHealth, bound_port, start_service_health

type Service = Callable[[NatsServer, str, ServiceHealth], Coroutine[Any, Any, None]]


async def _gateway(server: NatsServer, dsn: str, health: ServiceHealth) -> None:
    await run_gateway(server.url, access=server.access("gateway"), health=health)


async def _recorder(server: NatsServer, dsn: str, health: ServiceHealth) -> None:
    await run_recorders(server.url, None, dsn, SETTINGS, access=server.access("recorder"),
                        health=health)


async def _auth(server: NatsServer, dsn: str, health: ServiceHealth) -> None:
    assert server.secrets is not None
    pool = await open_database(dsn)
    try:
        await run_auth(server.url, pool, str(server.secrets.issuer_seed),
                       server.access("auth"), server.access("sys"), health=health)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _probed(health: ServiceHealth) -> AsyncIterator[int]:
    server = await start_service_health("127.0.0.1", 0, health)
    try:
        yield bound_port(server)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("service", [_gateway, _recorder, _auth],
                         ids=["gateway", "recorder", "auth"])
def test_ready_only_while_connected_to_nats(tmp_path: Path, database: str,
                                            service: Service) -> None:
    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        try:
            admin = await nats.connect(server.url, **server.access("admin").options())
            await markets_bucket(admin.jetstream(), SETTINGS)
            await admin.close()
            health = ServiceHealth()
            async with _probed(health) as port:
                assert await get(port, probe("/livez")) == (200, "ok\n")
                status, body = await get(port, probe("/readyz"))
                assert (status, body) == (503, "not ready: not connected yet, not started\n")

                task = asyncio.create_task(service(server, database, health))

                def answers(expected: int) -> Callable[[], Coroutine[Any, Any, bool]]:
                    async def check() -> bool:
                        return (await get(port, probe("/readyz")))[0] == expected
                    return check

                try:
                    await eventually(answers(200), 20, "/readyz answering 200")
                    assert await get(port, probe("/readyz")) == (200, "ready\n")
                    status, metrics = await get(port, probe("/metrics"))
                    assert status == 200
                    assert "tradeplane_nats_reconnects" in metrics

                    server.stop()  # NATS goes away: unready, but alive
                    await eventually(answers(503), 20, "/readyz answering 503")
                    status, body = await get(port, probe("/readyz"))
                    assert "not connected" in body
                    assert await get(port, probe("/livez")) == (200, "ok\n")

                    server.start()  # back on the same port: the service reconnects
                    await eventually(answers(200), 20, "/readyz ready again")
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            server.stop()

    run(scenario(), timeout=90)
