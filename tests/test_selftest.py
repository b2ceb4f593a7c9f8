"""``tradeplane selftest`` (what the chart's ``helm test`` runs) against a live exchange."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from tests.support.exchange import SOL, eventually, local_exchange, run
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
            await eventually(lambda: "waiting for sol-usdt" in out.getvalue(), 10,
                             "the selftest refused meanwhile: an unknown market")
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


def test_with_balances_it_defines_the_assets_and_funds_its_accounts(tmp_path: Path) -> None:
    """No asset is defined: the selftest defines the market's two (with the decimals
    ``tradeplane up`` gives them), deposits, trades; a second run finds them defined."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=2) as exchange:
            out = io.StringIO()
            assert await selftest(exchange.url, "sol-usdt", "100", 60, out,
                                  ledger_shards=2) == 0, out.getvalue()
            text = out.getvalue()
            assert "defined SOL with 8 decimals in shard 0" in text
            assert "defined USDT with 8 decimals in shard 1" in text
            assert "deposited 3 SOL for selftest-maker-" in text
            assert "deposited 300 USDT for selftest-taker-" in text
            assert "filled 1" in text
            for ledger in exchange.ledgers:
                assert ledger.ledger.decimals == {"SOL": 8, "USDT": 8}

            again = io.StringIO()
            assert await selftest(exchange.url, "sol-usdt", "100", 60, again,
                                  ledger_shards=2) == 0, again.getvalue()
            assert "defined" not in again.getvalue()
            assert "ok: one trade on sol-usdt" in again.getvalue()
    run(scenario(), timeout=120)


def test_with_balances_assets_defined_otherwise_are_kept(tmp_path: Path) -> None:
    """The administrator's decimals stand: the deposits are made in them."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1,
                                  assets={"SOL": 9, "USDT": 6}) as exchange:
            out = io.StringIO()
            assert await selftest(exchange.url, "sol-usdt", "100", 60, out,
                                  ledger_shards=1) == 0, out.getvalue()
            assert "defined" not in out.getvalue()
            assert exchange.ledgers[0].ledger.decimals == {"SOL": 9, "USDT": 6}
    run(scenario(), timeout=120)


def test_without_a_ledger_leader_it_fails_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange:
            out = io.StringIO()
            assert await selftest(exchange.url, "sol-usdt", "100", 3, out,
                                  ledger_shards=1) == 1
            assert "FAILED: ledger shards [0] have no leader" in out.getvalue()
    run(scenario())
