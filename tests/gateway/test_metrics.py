"""The gateway's Prometheus metrics, scraped over HTTP from prometheus_client's own server
(the registry ``tradeplane gateway --metrics-port`` serves) during a session of real requests:
accepted, crossing, refused at the edge and by the engine, in both response modes,
queries, and one whose result never comes.

The test's market is its own, so the series it checks move only with what it sends;
the few series without a market (latency by verb and mode, the ``unknown`` market) are
compared before and after.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import start_http_server

from tests.support.exchange import SOL, eventually, local_exchange, run
from tests.support.metrics import Samples, samples, value
from tradeplane_gateway.errors import RequestError

MARKET = msgspec.structs.replace(SOL, name="gateway-metrics")


@pytest.fixture
def metrics_port() -> Iterator[int]:
    """prometheus_client's HTTP server on a free port, for the length of the test."""
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    return samples(await asyncio.to_thread(get))


def test_a_session_of_requests_moves_the_gateway_metrics_as_it_went(
        tmp_path: Path, metrics_port: int) -> None:
    name = MARKET.name

    async def scenario() -> None:
        async with local_exchange(tmp_path, MARKET) as exchange:
            gateway = exchange.gateway
            before = await scrape(metrics_port)
            served = gateway.requests_served
            maker = (await exchange.client("maker"))
            taker = (await exchange.client("taker"))

            for price in ("100.00", "100.01", "100.02", "100.03"):  # 4 rest
                await maker.place(name, "sell", "1", price)
            crossing = await taker.place(name, "buy", "1.5", "100.01")  # 2 trades
            assert len(crossing.fills) == 2
            await taker.place(name, "buy", "0.5", type="market")  # 1 trade
            for _ in range(2):  # acknowledged once sequenced, resting far from the book
                await maker.place(name, "buy", "1", "95", response="ack")
            await maker.cancel(name, 4)
            status = await maker.status(name, 3)
            assert status.order is not None

            refusals: dict[str, int] = {}
            for price, times in (("150", 2), ("100.001", 3)):  # the band; off the tick
                for _ in range(times):
                    with pytest.raises(RequestError) as refused:
                        await taker.place(name, "buy", "1", price)
                    refusals[refused.value.name] = refusals.get(refused.value.name, 0) + 1
            assert refusals == {"OUTSIDE_PRICE_BAND": 2, "PRICE_NOT_ON_TICK": 3}
            with pytest.raises(RequestError, match="UNKNOWN_MARKET"):
                await taker.place("no-such-market", "buy", "1", "100")
            with pytest.raises(RequestError, match="UNKNOWN_ORDER"):
                await maker.status(name, 999)

            # The engine goes away: the next order is sequenced, its result never comes.
            gateway.result_timeout = 0.3
            await exchange.stop_engine(name)
            with pytest.raises(RequestError, match="RESULT_TIMEOUT"):
                await taker.place(name, "buy", "1", "99")

            answered = gateway.requests_served - served
            assert answered == 4 + 1 + 1 + 2 + 1 + 1 + 5 + 1 + 1 + 1

            def total(scraped: Samples) -> float:
                return sum(sample for (metric, _), sample in scraped.items()
                           if metric == "tradeplane_gateway_requests_total")

            async def all_counted() -> bool:
                return total(await scrape(metrics_port)) - total(before) == answered

            # Each request is counted once, when answered (right after its reply is sent).
            await eventually(all_counted, what="every request counted")
            after = await scrape(metrics_port)

        def moved(metric: str, /, **labels: str) -> float:
            return value(after, metric, **labels) - value(before, metric, **labels)

        def requests(verb: str, kind: str, result: str, market: str = name) -> float:
            return moved("tradeplane_gateway_requests_total", market=market, verb=verb,
                         type=kind, result=result)

        assert requests("place", "limit", "ok") == 4 + 1 + 2
        assert requests("place", "market", "ok") == 1
        assert requests("place", "limit", "rejected") == 2 + 3
        assert requests("place", "limit", "timeout") == 1
        assert requests("place", "limit", "error") == 0
        assert requests("cancel", "none", "ok") == 1
        assert requests("status", "none", "ok") == 1
        assert requests("status", "none", "rejected") == 1
        assert requests("place", "limit", "rejected", market="unknown") == 1

        def rejects(code: int, reject: str, stage: str, market: str = name) -> float:
            return moved("tradeplane_rejects_total", market=market, code=str(code),
                         name=reject, stage=stage)

        assert rejects(206, "OUTSIDE_PRICE_BAND", "engine") == 2
        assert rejects(203, "PRICE_NOT_ON_TICK", "edge") == 3
        assert rejects(905, "UNKNOWN_MARKET", "edge", market="unknown") == 1
        assert rejects(301, "UNKNOWN_ORDER", "edge") == 1
        assert rejects(910, "RESULT_TIMEOUT", "edge") == 0  # a timeout, not a reject

        # Latency: every request that went in flight, once, by verb and response mode.
        latency = "tradeplane_gateway_request_duration_seconds"
        assert moved(f"{latency}_count", verb="place", mode="result") == 4 + 1 + 1 + 2 + 1
        assert moved(f"{latency}_count", verb="place", mode="ack") == 2
        assert moved(f"{latency}_count", verb="cancel", mode="result") == 1
        assert moved(f"{latency}_bucket", verb="place", mode="result", le="+Inf") == 9
        # The one whose result never came was answered after the 0.3 s timeout.
        assert moved(f"{latency}_sum", verb="place", mode="result") >= 0.3
        assert moved(f"{latency}_bucket", verb="place", mode="result", le="0.25") <= 8

    run(scenario())
