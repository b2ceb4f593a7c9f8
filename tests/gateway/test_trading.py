"""Trading through the SDK against a real nats-server: the whole order path, every verb."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.exchange import BTC, SOL, eventually, local_exchange, run
from tradeplane_gateway import RequestError, connect
from tradeplane_gateway.errors import EdgeCode


def test_place_cross_partial_fill_cancel(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            ask = await alice.place("sol-usdt", "sell", "2", "100.5", client_order_id="ask-1")
            assert ask.ok
            assert ask.sequence == 1
            assert ask.order is not None
            assert ask.order.status == "new"
            assert ask.order.remaining_quantity == "2"

            take = await bob.place("sol-usdt", "buy", "1.25", "101")
            assert take.order is not None
            assert (take.order.status, take.order.filled_quantity) == ("filled", "1.25")
            assert [(fill.price, fill.quantity, fill.role) for fill in take.fills] == [
                ("100.5", "1.25", "taker")]

            status = await alice.status("sol-usdt", client_order_id="ask-1")
            assert status.order is not None
            assert status.order.status == "partiallyFilled"
            assert (status.order.filled_quantity, status.order.remaining_quantity) == (
                "1.25", "0.75")

            canceled = await alice.cancel("sol-usdt", ask.order.order_id)
            assert canceled.order is not None
            assert (canceled.order.status, canceled.order.reason) == ("canceled", "user")
            after = await alice.status("sol-usdt", ask.order.order_id)
            assert after.order == canceled.order
            # A cancel retried (its reply lost) gets the order as it is, and no events.
            again = await alice.cancel("sol-usdt", ask.order.order_id)
            assert again.order == canceled.order
            assert again.events == []
            assert again.sequence is not None
            assert again.sequence > (canceled.sequence or 0)  # sequenced anew
            with pytest.raises(RequestError) as refused:
                await alice.cancel("sol-usdt", 999)
            assert refused.value.code == 301  # never existed
            assert refused.value.sequence is not None  # refused by the engine, in sequence

    run(scenario())


def test_replace_keeps_or_loses_priority_and_can_cross(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            first = await alice.place("sol-usdt", "buy", "3", "99", client_order_id="b1")
            lower = await alice.replace("sol-usdt", client_order_id="b1", quantity="2")
            assert lower.order is not None
            assert (lower.order.quantity, lower.order.remaining_quantity) == ("2", "2")
            assert lower.events[0]["priorityKept"] is True

            await bob.place("sol-usdt", "sell", "1", "100")
            crossed = await alice.replace("sol-usdt", first.order.order_id  # type: ignore[union-attr]
                                          , price="100")
            assert [(fill.price, fill.quantity) for fill in crossed.fills] == [("100", "1")]
            assert crossed.order is not None
            assert (crossed.order.status, crossed.order.remaining_quantity) == (
                "partiallyFilled", "1")

    run(scenario())


def test_cancel_all_by_side_and_whole_account(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            for price in ("98", "99"):
                await alice.place("sol-usdt", "buy", "1", price)
            await alice.place("sol-usdt", "sell", "1", "105")
            buys = await alice.cancel_all("sol-usdt", "buy")
            assert sorted(event["orderId"] for event in buys.events) == [1, 2]
            rest = await alice.cancel_all("sol-usdt")
            assert [event["orderId"] for event in rest.events] == [3]
            async with alice.book("sol-usdt") as book:
                assert book.bids == []
                assert book.asks == []

    run(scenario())


def test_a_retried_submission_is_applied_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            first = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="retry-me")
            again = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="retry-me")
            acked = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="retry-me",
                                      response="ack")
            assert first.order is not None
            assert again.order is not None
            assert not first.duplicate
            assert again.duplicate
            assert acked.duplicate
            assert again.order.order_id == first.order.order_id
            assert again.sequence == acked.sequence == first.sequence
            status = await exchange.nc.jetstream().stream_info("tp-cmd-sol-usdt")
            assert status.state.messages == 1
            async with alice.book("sol-usdt") as book:
                assert book.bids == [("99", "1")]

    run(scenario())


def test_ack_mode_replies_once_sequenced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice:
            replies = [await alice.place("sol-usdt", "buy", "1", str(90 + n)) for n in range(5)]
            assert [reply.sequence for reply in replies] == [1, 2, 3, 4, 5]
            assert all(reply.order is None and reply.client_order_id for reply in replies)
            service = exchange.services["sol-usdt"]
            await eventually(lambda: service.engine.last_sequence == 5)
            status = await alice.status("sol-usdt", client_order_id=replies[2].client_order_id)
            assert status.order is not None
            assert status.order.price == "92"

    run(scenario())


def test_private_updates_reach_both_sides_and_nobody_else(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob, \
                connect(exchange.url, account="carol") as carol:
            received: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": [], "carol": []}

            async def collect(client: Any, into: list[dict[str, Any]]) -> None:
                async for update in client.order_updates():
                    into.append(update)

            tasks = [asyncio.create_task(collect(client, received[client.account]))
                     for client in (alice, bob, carol)]
            await asyncio.sleep(0)  # let the subscriptions start
            await alice.nc.flush()
            await alice.place("sol-usdt", "sell", "1", "100")
            await bob.place("sol-usdt", "buy", "1", "100")
            await eventually(lambda: len(received["alice"]) >= 2 and len(received["bob"]) >= 1)
            for task in tasks:
                task.cancel()
            alice_types = [e["type"] for message in received["alice"] for e in message["events"]]
            assert alice_types == ["accepted", "trade", "orderUpdate"]
            bob_trade = next(e for e in received["bob"][0]["events"] if e["type"] == "trade")
            assert (bob_trade["role"], bob_trade["side"]) == ("taker", "buy")
            assert received["carol"] == []

    run(scenario())


def test_unknown_market_and_markets_added_or_changed_without_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            with pytest.raises(RequestError) as unknown:
                await alice.place("btc-usdt", "buy", "0.001", "60000")
            assert unknown.value.code == EdgeCode.UNKNOWN_MARKET
            await exchange.define(BTC)
            await exchange.start_engine(BTC)
            placed = await alice.place("btc-usdt", "buy", "0.001", "60000")
            assert placed.order is not None
            assert placed.order.status == "new"

            coarser = type(SOL)(**{**{f: getattr(SOL, f) for f in SOL.__struct_fields__},
                                   "tick_size": "0.5"})
            await exchange.define(coarser)
            await eventually(lambda: exchange.markets.get("sol-usdt").spec.tick_size == "0.5")  # type: ignore[union-attr]
            with pytest.raises(RequestError) as off_tick:
                await alice.place("sol-usdt", "buy", "1", "100.25")
            assert off_tick.value.code == 203

    run(scenario())
