"""``tradeplane selftest`` (what the chart's ``helm test`` runs) against a live exchange."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from tests.support.exchange import SOL, local_exchange, run
from tradeplane.selftest import selftest


def test_one_trade_end_to_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange:
            out = io.StringIO()
            assert await selftest(exchange.url, "sol-usdt", "100", 30, out) == 0, out.getvalue()
            assert "ok: one trade on sol-usdt" in out.getvalue()
            assert "filled 1" in out.getvalue()
            assert exchange.services["sol-usdt"].engine.next_trade_id == 2
    run(scenario())


def test_it_waits_for_a_market_that_comes_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path) as exchange:
            out = io.StringIO()
            check = asyncio.create_task(selftest(exchange.url, "sol-usdt", "100", 60, out))
            await asyncio.sleep(0.5)  # the selftest is refused meanwhile: unknown market
            await exchange.define(SOL)
            await exchange.start_engine(SOL)
            assert await check == 0, out.getvalue()
            assert "waiting for sol-usdt" in out.getvalue()
    run(scenario(), timeout=90)


def test_it_fails_clearly_when_the_market_never_comes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path) as exchange:
            out = io.StringIO()
            assert await selftest(exchange.url, "nope-usdt", "100", 3, out) == 1
            assert "FAILED: market nope-usdt not served in time" in out.getvalue()
    run(scenario())
