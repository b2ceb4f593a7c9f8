"""The engine's health endpoint, asked over real HTTP as the kubelet's probes ask it."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane_engine.feed import FeedError
from tradeplane_engine.service import MarketService, run_engines
from tradeplane_engine.service.health import bound_port, start_health_server
from tradeplane_engine.service.watchdog import WEDGED_AFTER
from tradeplane_engine.streams import ensure_market_streams
from tradeplane_engine.wire import command_stream, command_subject


async def get(port: int, request: bytes) -> tuple[int, str]:
    """Send one raw request; the response's status code and body, read to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await reader.read()  # to EOF: the server closes after each response
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *headers = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    assert "Connection: close" in headers
    assert f"Content-Length: {len(body)}" in headers
    return int(status), body.decode()


def probe(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.31\r\n\r\n".encode()


def test_readyz_waits_for_the_market_to_catch_up_and_livez_answers(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            service = MarketService(exchange.nc, SOL, SETTINGS)
            server = await start_health_server("127.0.0.1", 0, [service])
            port = bound_port(server)
            try:
                assert await get(port, probe("/livez")) == (200, "ok\n")
                assert await get(port, probe("/readyz")) == (503, "not ready: sol-usdt\n")

                exchange.engine_tasks[SOL.name] = asyncio.create_task(service.run())

                async def ready() -> bool:
                    return await get(port, probe("/readyz")) == (200, "ready\n")

                await eventually(ready, what="/readyz answering 200")
                assert service.ready.is_set()
                assert await get(port, probe("/livez")) == (200, "ok\n")
            finally:
                server.close()
                await server.wait_closed()

    run(scenario())


PLACE = (b'{"type":"place","sequence":0,"timestamp":0,"account":"alice","side":"buy",'
         b'"quantity":100,"price":9900}')


def test_livez_fails_while_a_market_is_wedged_and_an_idle_market_is_not(
        tmp_path: Path) -> None:
    """With the real threshold (``WEDGED_AFTER``, 30 s): the test moves the service's
    clock on instead of waiting it out. The apply path is blocked by holding the hot
    path's lock, as a takeover does while it publishes."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            service = MarketService(exchange.engine_nc, SOL, SETTINGS)
            moved_on = 0.0
            service.clock = lambda: time.monotonic() + moved_on
            server = await start_health_server("127.0.0.1", 0, [service])
            port = bound_port(server)
            try:
                exchange.engine_tasks[SOL.name] = asyncio.create_task(service.run())
                await asyncio.wait_for(service.ready.wait(), 10)
                await eventually(lambda: service.progressed is not None, 5, "consuming")

                # Idle for twice the threshold: the feed waited for commands meanwhile,
                # and each wait is a turn of the loop, so the market is alive.
                moved_on += 2 * WEDGED_AFTER
                now = service.clock()
                await eventually(lambda: (service.progressed or 0) >= now, 5,
                                 "the idle loop turned after the clock moved on")
                assert await get(port, probe("/livez")) == (200, "ok\n")

                async with service.hot_path.lock:
                    await exchange.nc.jetstream().publish(command_subject(SOL.name), PLACE)
                    await eventually(lambda: service.in_hand == 1, 10, "the command taken")
                    assert await get(port, probe("/livez")) == (200, "ok\n")  # not yet
                    moved_on += WEDGED_AFTER + 1
                    status, body = await get(port, probe("/livez"))
                    assert status == 503
                    assert re.fullmatch(r"wedged: sol-usdt: no progress for 3\d s with 1 "
                                        r"command in hand\n", body), body
                    assert await get(port, probe("/readyz")) == (200, "ready\n")

                # Free again, the command is applied and published: alive.
                await eventually(lambda: service.published_through == 1, 10, "the command")
                assert service.in_hand == 0
                assert await get(port, probe("/livez")) == (200, "ok\n")
            finally:
                server.close()
                await server.wait_closed()

    run(scenario())


def test_livez_fails_when_a_markets_service_stopped_and_the_process_did_not(
        tmp_path: Path) -> None:
    """A command stream that no longer holds what the engine needs stops the service
    (``FeedError``); /livez says so for as long as the process answers."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            js = exchange.nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            for _ in range(3):
                await js.publish(command_subject(SOL.name), PLACE)
            await js.purge_stream(command_stream(SOL.name), keep=1)  # starts at 3 now
            service = MarketService(exchange.engine_nc, SOL, SETTINGS)
            server = await start_health_server("127.0.0.1", 0, [service])
            port = bound_port(server)
            try:
                assert await get(port, probe("/livez")) == (200, "ok\n")  # not started
                with pytest.raises(FeedError):
                    await service.run()
                status, body = await get(port, probe("/livez"))
                assert status == 503
                assert body.startswith("wedged: sol-usdt: stopped: FeedError: "), body
            finally:
                server.close()
                await server.wait_closed()

    run(scenario())


@pytest.mark.parametrize(("request_bytes", "status"), [
    (probe("/"), 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404),
    (b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404),
    (b"hello\r\n\r\n", 400),
    (b"GET /livez SPDY/3\r\n\r\n", 400),
    (b"\xff\xfe\x00garbage\r\n\r\n", 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 400),
])
def test_anything_but_the_two_probes_is_refused(request_bytes: bytes, status: int) -> None:
    async def scenario() -> None:
        server = await start_health_server("127.0.0.1", 0, [])
        try:
            assert (await get(bound_port(server), request_bytes))[0] == status
            # An engine with no market running yet is alive but not ready.
            assert await get(bound_port(server), probe("/readyz")) == (
                503, "not ready: no markets running yet\n")
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_run_engines_serves_the_probes_before_and_after_its_market_is_defined(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, engines=False) as exchange:
            port = _free_port()
            engines = asyncio.create_task(run_engines(
                exchange.url, [SOL.name], SETTINGS, health_port=port, health_host="127.0.0.1"))
            exchange.tasks.append(engines)

            async def answers(expected: tuple[int, str]) -> bool:
                try:
                    return await get(port, probe("/readyz")) == expected
                except ConnectionRefusedError:
                    return False  # not listening yet

            await eventually(lambda: answers((503, "not ready: no markets running yet\n")),
                             what="/readyz before the market is defined")
            assert await get(port, probe("/livez")) == (200, "ok\n")
            await exchange.define(SOL)
            await eventually(lambda: answers((200, "ready\n")),
                             what="/readyz once the market caught up")

            engines.cancel()
            await asyncio.gather(engines, return_exceptions=True)
            with pytest.raises(ConnectionRefusedError):
                await get(port, probe("/livez"))

    run(scenario())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
