"""Balances through the whole order path, on a real nats-server: the gateway funds each
order at its account's ledger shard, the shard forwards it to its market, and settles
the market's events (docs/ledger.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane_engine.core import RejectCode
from tradeplane_gateway import RequestError, connect

ASSETS = {"SOL": 4, "USDT": 6}
"""SOL's lot of 0.01 is 100 units; a tick × lot (0.01 × 0.01 USDT) is 100 USDT units."""
USDT = 1_000_000
SOL_UNIT = 10_000


def test_an_order_its_account_cannot_pay_for_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await exchange.fund("alice", USDT=99 * USDT)
            with pytest.raises(RequestError) as refused:
                await alice.place("sol-usdt", "buy", "1", "100")
            assert refused.value.code == RejectCode.INSUFFICIENT_FUNDS
            assert refused.value.name == "INSUFFICIENT_FUNDS"
            ledger = exchange.ledgers[0].ledger
            assert ledger.balance("alice", "USDT") == (99 * USDT, 0)
            assert exchange.services["sol-usdt"].engine.l3().bids == []
            assert ledger.audit() == []

    run(scenario())


def test_a_trade_settles_both_accounts_and_a_cancel_releases(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            await exchange.fund("alice", USDT=1_000 * USDT)
            await exchange.fund("bob", SOL=5 * SOL_UNIT)
            ledger = exchange.ledgers[0].ledger
            ask = await bob.place("sol-usdt", "sell", "2", "100", client_order_id="ask")
            assert ask.ok and ask.order is not None and ask.sequence is not None
            await eventually(lambda: ledger.balance("bob", "SOL") == (3 * SOL_UNIT,
                                                                      2 * SOL_UNIT),
                             what="the ask's hold")
            take = await alice.place("sol-usdt", "buy", "1.5", "101")
            assert take.order is not None and take.order.status == "filled"
            await eventually(lambda: ledger.balance("alice", "SOL") == (15_000, 0),
                             what="settlement")
            # 1.5 SOL at 100 (no fees on this market): 150 USDT; the 1.5 held at 101 is back.
            assert ledger.balance("alice", "USDT") == (850 * USDT, 0)
            assert ledger.balance("bob", "USDT") == (150 * USDT, 0)
            assert ledger.balance("bob", "SOL") == (3 * SOL_UNIT, 5_000)
            await bob.cancel("sol-usdt", ask.order.order_id)
            await eventually(lambda: ledger.balance("bob", "SOL") == (35_000, 0),
                             what="the cancel's release")
            assert ledger.audit() == []

    run(scenario())
