"""Values in the markets bucket that are not a definition of the market their key names,
written there by anyone with access to it: every reader (the gateway, an engine waiting
for its market, the recorder following the bucket, ``tradeplane status``) skips them with
a log line and a count, and keeps the market's last good definition."""

from __future__ import annotations

import argparse
import asyncio
import io
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane.trading import status_command
from tradeplane_engine.store.following import RecordedMarkets
from tradeplane_engine.streams import market_definition, markets_bucket
from tradeplane_engine.wire import MarketDefinition, encode_definition
from tradeplane_gateway import connect

BAD: list[tuple[str, bytes]] = [
    ("not JSON", b"\xff\x00 not json"),
    ("not a market spec", b'{"name": "sol-usdt", "base": "SOL", "tickSize": 5}'),
    ("another market's definition", encode_definition(msgspec.structs.replace(
        SOL, name="other-usdt", tick_size="1"))),
    ("a huge value", encode_definition(msgspec.structs.replace(
        SOL, tick_size="1", fees={"padding": "x" * 100_000}))),
]


def skipped(component: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
        "component": component, "what": "market definition"}) or 0.0


@pytest.mark.parametrize("value", [value for _, value in BAD], ids=[name for name, _ in BAD])
def test_a_bad_definition_is_skipped_and_the_last_good_one_stays(tmp_path: Path,
                                                                 value: bytes) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            kv = await markets_bucket(exchange.nc.jetstream(), SETTINGS)

            async def idle(nc: Client, pool: asyncpg.Pool,
                           definition: MarketDefinition) -> None:
                await asyncio.Event().wait()

            recorded = RecordedMarkets(exchange.nc, None, tasks=idle)
            await recorded.apply("sol-usdt", encode_definition(SOL), "PUT")
            before = {component: skipped(component)
                      for component in ("gateway", "engine", "recorder", "cli")}

            await kv.put("sol-usdt", value)
            await eventually(lambda: skipped("gateway") > before["gateway"], 10,
                             "the gateway skipping the value")
            await recorded.apply("sol-usdt", value, "PUT")
            assert skipped("recorder") > before["recorder"]
            assert recorded.definitions == {"sol-usdt": SOL}
            out = io.StringIO()
            arguments = argparse.Namespace(nats=exchange.server.url,
                                           access=exchange.server.access("admin"))
            assert await status_command(arguments, out) == 0
            assert "sol-usdt     definition refused" in out.getvalue()
            assert skipped("cli") > before["cli"]

            # The gateway serves the market as before: a price on SOL's tick of 0.01.
            known = exchange.markets.get("sol-usdt")
            assert known is not None
            assert known.definition == SOL
            placed = await alice.place("sol-usdt", "buy", "1", "99.01")
            assert placed.ok
            assert not any(task.done() for task in exchange.tasks)

            # An engine starting now waits for a valid definition rather than failing.
            waiting = asyncio.create_task(market_definition(kv, "sol-usdt"))
            await eventually(lambda: skipped("engine") > before["engine"], 10,
                             "the engine skipping the value")
            assert not waiting.done()
            await kv.put("sol-usdt", encode_definition(SOL))
            assert await asyncio.wait_for(waiting, 10) == SOL

    run(scenario())
