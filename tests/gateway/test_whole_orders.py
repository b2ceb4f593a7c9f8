"""Every reply that carries an order describes it whole, with the same fields.

A place's result, a duplicate place, a replace, a cancel, a status answer (from the
engine's book, from its memory of finished orders, from PostgreSQL: see
test_order_status.py) and open orders: orderId, clientOrderId, status, side, price
(none for a market order), quantity (none for a market buy by quote amount, which has
quoteAmount), filledQuantity, remainingQuantity, and reason once canceled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.exchange import SOL, local_exchange, run
from tradeplane_engine.core import Place, Side
from tradeplane_engine.core.commands import OrderType, SelfTradePrevention, TimeInForce
from tradeplane_engine.wire import PublicFormatter
from tradeplane_gateway import RequestError, connect
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.protocol import OrderState
from tradeplane_gateway.retries import differences


def whole(order: OrderState | None) -> dict[str, Any]:
    assert order is not None
    described: dict[str, Any] = msgspec.to_builtins(order)
    return described


def test_every_reply_describes_the_order_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            placed = await alice.place("sol-usdt", "sell", "2", "100.5", client_order_id="a1")
            resting = {"orderId": 1, "clientOrderId": "a1", "status": "new", "side": "sell",
                       "price": "100.5", "quantity": "2", "filledQuantity": "0",
                       "remainingQuantity": "2"}
            assert whole(placed.order) == resting
            again = await alice.place("sol-usdt", "sell", "2", "100.5", client_order_id="a1")
            assert again.duplicate
            assert whole(again.order) == resting
            assert whole((await alice.status("sol-usdt", 1)).order) == resting
            assert [whole(order) for order in (await alice.open_orders("sol-usdt")).orders
                    or []] == [resting]

            await bob.place("sol-usdt", "buy", "0.5", "101")
            replaced = await alice.replace("sol-usdt", 1, price="100.75", quantity="3")
            moved = {**resting, "status": "partiallyFilled", "price": "100.75",
                     "quantity": "3", "filledQuantity": "0.5", "remainingQuantity": "2.5"}
            assert whole(replaced.order) == moved
            assert whole((await alice.status("sol-usdt", 1)).order) == moved

            canceled = await alice.cancel("sol-usdt", client_order_id="a1")
            finished = {**moved, "status": "canceled", "remainingQuantity": "0",
                        "reason": "user"}
            assert whole(canceled.order) == finished
            assert whole((await alice.status("sol-usdt", 1)).order) == finished  # memory

            # market orders: no price; a market buy by quote amount: no quantity either
            await alice.place("sol-usdt", "sell", "3", "100", client_order_id="a2")
            by_quantity = await bob.place("sol-usdt", "buy", "1", type="market",
                                          client_order_id="b-market")
            assert whole(by_quantity.order) == {
                "orderId": 4, "clientOrderId": "b-market", "status": "filled", "side": "buy",
                "quantity": "1", "filledQuantity": "1", "remainingQuantity": "0"}
            by_quote = await bob.place("sol-usdt", "buy", type="market", quote_amount="50",
                                       client_order_id="b-quote")
            assert whole(by_quote.order) == {
                "orderId": 5, "clientOrderId": "b-quote", "status": "filled", "side": "buy",
                "quoteAmount": "50", "filledQuantity": "0.5", "remainingQuantity": "0"}
            for reply in (by_quantity, by_quote):
                assert reply.order is not None
                status = await bob.status("sol-usdt", reply.order.order_id)
                assert status.order == reply.order

    run(scenario())


def test_a_replace_after_a_decrement_counts_only_what_traded(tmp_path: Path) -> None:
    """A self-trade decrement took lots without a trade: the replace's order has filled
    nothing, and what is gone is quantity - filled - remaining."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await alice.place("sol-usdt", "sell", "2", "100", client_order_id="s")
            await alice.place("sol-usdt", "buy", "0.5", "100", stp="decrement")
            reduced = await alice.status("sol-usdt", client_order_id="s")
            assert (reduced.order and reduced.order.status, reduced.order
                    and reduced.order.remaining_quantity) == ("new", "1.5")

            for price, total, remaining in (("100", "1.75", "1.25"), ("100.5", "3", "2.5")):
                reply = await alice.replace("sol-usdt", client_order_id="s", price=price,
                                            quantity=total)
                expected = {"orderId": 1, "clientOrderId": "s", "status": "new",
                            "side": "sell", "price": price, "quantity": total,
                            "filledQuantity": "0", "remainingQuantity": remaining}
                assert whole(reply.order) == expected
                replaced = next(event for event in reply.events
                                if event["type"] == "replaced")
                assert (replaced["side"], replaced["filledQuantity"]) == ("sell", "0")
                assert whole((await alice.status("sol-usdt", 1)).order) == expected

    run(scenario())


def test_a_place_retried_with_other_terms_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            first = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="x")
            assert first.order is not None
            with pytest.raises(RequestError) as refused:
                await alice.place("sol-usdt", "buy", "1", "98", client_order_id="x")
            error = refused.value
            assert (error.code, error.name) == (913, "DUPLICATE_MISMATCH")
            assert error.sequence == first.sequence
            assert error.client_order_id == "x"
            assert error.order == first.order  # the original, as it is
            assert "price 98 (the original's: 99)" in error.reason

            with pytest.raises(RequestError) as acked:  # an ack is compared too
                await alice.place("sol-usdt", "buy", "2", "99", client_order_id="x",
                                  response="ack")
            assert acked.value.code == EdgeCode.DUPLICATE_MISMATCH
            assert "quantity 2 (the original's: 1)" in acked.value.reason

            same = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="x")
            assert same.duplicate
            assert same.order == first.order
            same_ack = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="x",
                                         response="ack")
            assert same_ack.duplicate
            assert same_ack.sequence == first.sequence
            assert same_ack.order is None

            await alice.cancel("sol-usdt", client_order_id="x")  # finished: still compared
            with pytest.raises(RequestError) as finished:
                await alice.place("sol-usdt", "sell", "1", "99", client_order_id="x")
            assert finished.value.code == 913
            assert finished.value.order is not None
            assert finished.value.order.status == "canceled"
            orders = await alice.open_orders("sol-usdt")
            assert orders.orders == []  # nothing was placed by the refused retries

    run(scenario())


FORMATTER = PublicFormatter(SOL.spec())
ORIGINAL = {"orderId": 1, "clientOrderId": "x", "status": "new", "side": "buy",
            "price": "99", "quantity": "1", "filledQuantity": "0", "remainingQuantity": "1",
            "type": "limit", "timeInForce": "GTC", "postOnly": False, "stp": "expireMaker"}


def retry(**changes: Any) -> Place:
    fields: dict[str, Any] = {"quantity": 100, "price": 9900, "client_order_id": "x"}
    fields.update(changes)
    return Place(0, 0, "alice", fields.pop("side", Side.BUY), **fields)


@pytest.mark.parametrize(("place", "original", "found"), [
    pytest.param(retry(), ORIGINAL, [], id="the same"),
    pytest.param(retry(side=Side.SELL), ORIGINAL, ["side sell (the original's: buy)"],
                 id="side"),
    pytest.param(retry(time_in_force=TimeInForce.IOC), ORIGINAL,
                 ["timeInForce IOC (the original's: GTC)"], id="time in force"),
    pytest.param(retry(post_only=True), ORIGINAL, ["postOnly true (the original's: false)"],
                 id="post-only"),
    pytest.param(retry(stp=SelfTradePrevention.NONE), ORIGINAL,
                 ["stp none (the original's: expireMaker)"], id="stp"),
    pytest.param(retry(stp=SelfTradePrevention.NONE),
                 {key: value for key, value in ORIGINAL.items() if key != "stp"}, [],
                 id="stp unknown (PostgreSQL) is not compared"),
    pytest.param(retry(order_type=OrderType.MARKET, price=0), ORIGINAL,
                 ["price none (the original's: 99)", "type market (the original's: limit)"],
                 id="market against limit"),
    pytest.param(retry(price=9800), {"orderId": 0, "clientOrderId": "x", "status": "rejected",
                                     "filledQuantity": "0", "remainingQuantity": "0"}, [],
                 id="a refused original has no terms"),
])
def test_what_a_retry_is_compared_on(place: Place, original: dict[str, Any],
                                     found: list[str]) -> None:
    assert differences(place, original, FORMATTER) == found
