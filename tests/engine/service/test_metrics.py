"""The engine's Prometheus metrics, scraped over HTTP from its health port as Prometheus
scrapes them, during a short session of real orders through a gateway.

Each test trades in a market of its own (the registry is the process's, see
tests/support/metrics.py) and compares what it scrapes before and after.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tests.support.metrics import Samples, has, samples, value
from tradeplane.processes import NatsServer
from tradeplane_engine.connection import connect
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.service import run_engines
from tradeplane_engine.service.health import bound_port, start_health_server
from tradeplane_gateway.errors import RequestError


async def scrape(port: int) -> tuple[str, Samples]:
    """``GET /metrics``: the response's content type, and every sample by name and labels."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: pod\r\nUser-Agent: Prometheus/3.0\r\n\r\n")
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    assert status_line == "HTTP/1.1 200 OK"
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return headers["Content-Type"], samples(body.decode())


def test_a_trading_session_moves_the_engine_metrics_as_it_went(tmp_path: Path) -> None:
    market = msgspec.structs.replace(SOL, name="engine-metrics")
    series = {"market": market.name, "replica": "solo"}

    async def scenario() -> None:
        async with local_exchange(tmp_path, market) as exchange:
            service = exchange.services[market.name]
            batches = 0
            process: Callable[[list[SequencedCommand]], Awaitable[None]] = service.process

            async def counted(batch: list[SequencedCommand]) -> None:
                nonlocal batches
                batches += 1
                await process(batch)

            service.process = counted  # type: ignore[method-assign]
            server = await start_health_server("127.0.0.1", 0, [service])
            port = bound_port(server)
            try:
                content_type, before = await scrape(port)
                assert content_type.startswith("text/plain; version=0.0.4")
                assert value(before, "tradeplane_engine_leader", **series) == 1
                assert value(before, "tradeplane_engine_ready", **series) == 1

                maker = (await exchange.client("maker"))
                taker = (await exchange.client("taker"))
                for price in ("100.00", "100.01", "100.02", "100.03", "100.04"):
                    await maker.place(market.name, "sell", "1.5", price)
                # Crosses the three best asks: three trades, 4 SOL for 400.035 USDT.
                reply = await taker.place(market.name, "buy", "4", "100.02")
                assert reply.order is not None
                assert reply.order.status == "filled"
                assert [fill.quantity for fill in reply.fills] == ["1.5", "1.5", "1"]
                rejected = 0
                for _ in range(2):
                    with pytest.raises(RequestError) as refusal:
                        await taker.place(market.name, "buy", "1", "150")  # outside the band
                    assert refusal.value.name == "OUTSIDE_PRICE_BAND"
                    rejected += 1
                await maker.cancel(market.name, 5)  # the ask at 100.04

                commands = 5 + 1 + rejected + 1
                await eventually(lambda: service.engine.last_sequence == commands,
                                 what="every command applied")
                _, after = await scrape(port)
            finally:
                server.close()
                await server.wait_closed()

            def moved(name: str, /, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert moved("tradeplane_engine_commands_applied_total", **series) == commands
            assert moved("tradeplane_engine_match_seconds_count", **series) == batches
            assert moved("tradeplane_engine_match_command_seconds_count", **series) == batches
            assert value(after, "tradeplane_engine_match_seconds_sum", **series) > 0
            assert value(after, "tradeplane_engine_match_seconds_bucket", **series,
                         le="+Inf") == value(after, "tradeplane_engine_match_seconds_count",
                                             **series)
            assert moved("tradeplane_engine_trades_total", **series) == 3
            assert moved("tradeplane_engine_traded_base_total", **series) == pytest.approx(4)
            assert moved("tradeplane_engine_traded_quote_total", **series) == pytest.approx(
                1.5 * 100.00 + 1.5 * 100.01 + 1 * 100.02)
            # Left: 0.5 at 100.02 and 1.5 at 100.03; no bids (the buy was filled).
            assert value(after, "tradeplane_engine_book_levels", **series, side="ask") == 2
            assert value(after, "tradeplane_engine_book_orders", **series, side="ask") == 2
            assert value(after, "tradeplane_engine_book_levels", **series, side="bid") == 0
            assert value(after, "tradeplane_engine_sequence", **series) == commands
            assert value(after, "tradeplane_engine_leader", **series) == 1
            assert value(after, "tradeplane_engine_failovers_total", **series) == 0

    run(scenario())


def test_a_replica_run_by_run_engines_reports_its_role_lag_and_failovers(
        tmp_path: Path) -> None:
    """The way a pod runs: a lease to win, a status report every second (the lag)."""
    market = msgspec.structs.replace(SOL, name="engine-metrics-replica")
    series = {"market": market.name, "replica": "engine-0"}

    async def scenario() -> None:
        async with local_exchange(tmp_path, market, engines=False) as exchange:
            port = _free_port()
            engines = asyncio.create_task(run_engines(
                exchange.url, [market.name], SETTINGS, replica="engine-0", health_port=port,
                health_host="127.0.0.1"))
            exchange.tasks.append(engines)

            async def leading() -> bool:
                try:
                    _, scraped = await scrape(port)
                except ConnectionRefusedError:
                    return False  # not listening yet
                return (value(scraped, "tradeplane_engine_leader", **series) == 1
                        and value(scraped, "tradeplane_engine_ready", **series) == 1)

            await eventually(leading, what="the replica leading")
            await (await exchange.client("maker")).place(market.name, "sell", "1", "100")

            async def reported() -> bool:
                _, scraped = await scrape(port)
                return (value(scraped, "tradeplane_engine_sequence", **series) == 1
                        and has(scraped, "tradeplane_engine_lag_commands", **series)
                        and value(scraped, "tradeplane_engine_lag_commands", **series) == 0)

            await eventually(reported, what="the order applied and the lag reported")
            _, scraped = await scrape(port)
            assert value(scraped, "tradeplane_engine_lag_commands", **series) == 0
            assert value(scraped, "tradeplane_engine_ready", **series) == 1
            # Winning the first election is taking the lead: counted.
            assert value(scraped, "tradeplane_engine_failovers_total", **series) == 1
            assert value(scraped, "tradeplane_engine_book_orders", **series, side="ask") == 1
            assert has(scraped, "tradeplane_nats_reconnects_total", component="engine")

    run(scenario())


def test_a_reconnect_to_nats_is_counted(tmp_path: Path) -> None:
    """A real nats-server stopped and started again on its port: one reconnect."""

    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        port = int(server.url.rsplit(":", 1)[1])
        nc = await connect(server.url, "metrics-test", "recorder", server.access("recorder"))
        again: NatsServer | None = None
        try:
            metrics = await start_health_server("127.0.0.1", 0, [])
            health = bound_port(metrics)
            try:
                _, before = await scrape(health)
                server.stop()
                again = NatsServer.secured(tmp_path / "nats", port=port).start()

                async def counted() -> bool:
                    _, scraped = await scrape(health)
                    return value(scraped, "tradeplane_nats_reconnects_total",
                                 component="recorder") == value(
                        before, "tradeplane_nats_reconnects_total", component="recorder") + 1

                await eventually(counted, 20, "the reconnect counted")
                assert nc.is_connected
            finally:
                metrics.close()
                await metrics.wait_closed()
        finally:
            await nc.close()
            server.stop()
            if again is not None:
                again.stop()

    run(scenario())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
