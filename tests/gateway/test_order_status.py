"""``status`` by clientOrderId describes the order that carries it, whoever answers.

A clientOrderId names an order; commands that name it (a cancel, a replace) can be
refused, and it can be used again once its order finished. The answer is the order
that carries it: the open one, else the one that reached its final state last (a
refused place is a new order that ended ``rejected``). A refused cancel or replace is
not an order's state. The engine answers from its memory, PostgreSQL (through the
recorder's history) from the tables; both must give the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.exchange import SOL, Exchange, eventually, local_exchange, run
from tradeplane_engine.access import GATEWAY_INBOX
from tradeplane_engine.core import OrderAccepted, OrderRejected
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.queries import History, OrderQuery
from tradeplane_engine.store.recorder import Recorder
from tradeplane_engine.wire import (
    HEADER_MESSAGE_ID,
    HEADER_REPLY,
    command_subject,
    decode_events,
    encode_command,
)
from tradeplane_gateway import Client, RequestError, connect
from tradeplane_gateway.validation import decode_request, submission

STEPS: list[tuple[str, dict[str, Any], int | None]] = [
    # an open order; a replace and a place naming its clientOrderId are refused
    ("place", {"side": "sell", "quantity": "1", "price": "105", "client_order_id": "live"},
     None),
    ("replace", {"client_order_id": "live", "price": "200"}, 206),
    ("placeLater", {"side": "sell", "quantity": "1", "price": "106", "client_order_id": "live"},
     207),
    # a finished order; a cancel of it again answers it as it is, a replace is refused
    ("place", {"side": "sell", "quantity": "1", "price": "107", "client_order_id": "done"},
     None),
    ("cancel", {"client_order_id": "done"}, None),
    ("cancel", {"client_order_id": "done"}, None),
    ("replace", {"client_order_id": "done", "quantity": "2"}, 914),
    # used again once its first order finished: the newer order carries it
    ("place", {"side": "sell", "quantity": "1", "price": "108", "client_order_id": "reused"},
     None),
    ("cancel", {"client_order_id": "reused"}, None),
    ("placeLater", {"side": "sell", "quantity": "1", "price": "109",
                    "client_order_id": "reused"}, None),
    ("cancel", {"client_order_id": "reused"}, None),
    ("cancel", {"client_order_id": "reused"}, None),
    # a refused place after a finished order: the newest order is the rejected one
    ("place", {"side": "sell", "quantity": "1", "price": "104", "client_order_id": "refused"},
     None),
    ("cancel", {"client_order_id": "refused"}, None),
    ("placeLater", {"side": "sell", "quantity": "1", "price": "200",
                    "client_order_id": "refused"}, 206),
    # a refused place, then an accepted one: the accepted one
    ("place", {"side": "sell", "quantity": "1", "price": "300", "client_order_id": "retried"},
     206),
    ("placeLater", {"side": "sell", "quantity": "1", "price": "103",
                    "client_order_id": "retried"}, None),
    ("replace", {"client_order_id": "retried", "price": "300"}, 206),
]

EXPECTED: dict[str, tuple[str, int | None]] = {
    # clientOrderId: (status, code); the order id is the last accepted one carrying it
    "live": ("new", None),
    "done": ("canceled", None),
    "reused": ("canceled", None),
    "refused": ("rejected", 206),
    "retried": ("new", None),
}


async def play(exchange: Exchange, alice: Client) -> dict[str, int]:
    """Send the steps; the order id of the last accepted order per clientOrderId."""
    accepted: dict[str, int] = {}
    for verb, arguments, code in STEPS:
        if verb == "placeLater":
            order_id, refused = await place_later(exchange, arguments)
        else:
            try:
                reply = await getattr(alice, verb)("sol-usdt", **arguments)
            except RequestError as exc:
                order_id, refused = 0, exc.code
            else:
                order_id, refused = (reply.order.order_id if reply.order else 0), None
        assert refused == code, (verb, arguments, refused)
        if verb.startswith("place") and code is None:
            accepted[arguments["client_order_id"]] = order_id
    return accepted


async def place_later(exchange: Exchange, arguments: dict[str, Any]) -> tuple[int, int | None]:
    """A place sent after the command stream's duplicate window (2 minutes) has passed
    since the clientOrderId was last sent: sequenced anew. Published as the gateway
    would, under a message id of its own, since the test cannot wait out the window.
    (order id, None) when accepted, (0, code) when refused."""
    request = decode_request("place", msgspec.json.encode({
        "market": "sol-usdt", "side": arguments["side"], "quantity": arguments["quantity"],
        "price": arguments["price"], "clientOrderId": arguments["client_order_id"]}))
    work = submission(exchange.markets, "alice", request, lambda: "unused")
    inbox = f"{GATEWAY_INBOX}.test.{exchange.nc._nuid.next().decode()}"  # as a gateway's
    results = await exchange.nc.subscribe(inbox)
    try:
        await exchange.nc.jetstream().publish(
            command_subject("sol-usdt"), encode_command(work.command),
            headers={HEADER_MESSAGE_ID: f"{work.message_id}:later", HEADER_REPLY: inbox})
        batch = decode_events((await results.next_msg(timeout=5)).data)
    finally:
        await results.unsubscribe()
    for event in batch.events:
        if isinstance(event, OrderAccepted):
            return event.order_id, None
        if isinstance(event, OrderRejected):
            return 0, int(event.code)
    raise AssertionError(f"neither accepted nor rejected: {batch.events}")


def expected(accepted: dict[str, int]) -> dict[str, tuple[str, int | None, int]]:
    """clientOrderId: (status, code, order id) as the answer must describe it."""
    return {client_order_id: (status, code, 0 if code else accepted[client_order_id])
            for client_order_id, (status, code) in EXPECTED.items()}


def described(order: dict[str, Any] | None) -> tuple[str, int | None, int] | None:
    return None if order is None else (order["status"], order.get("code"), order["orderId"])


async def status(alice: Client, client_order_id: str) -> dict[str, Any] | None:
    reply = await alice.status("sol-usdt", client_order_id=client_order_id)
    if reply.order is None:
        return None
    order = reply.order
    return {"status": order.status, "code": order.code, "orderId": order.order_id}


async def whole_orders(alice: Client) -> dict[str, dict[str, Any]]:
    """Every clientOrderId's order as the ``status`` reply carries it, every field."""
    orders = {}
    for client_order_id in EXPECTED:
        reply = await alice.status("sol-usdt", client_order_id=client_order_id)
        assert reply.order is not None
        orders[client_order_id] = msgspec.to_builtins(reply.order)
    return orders


WHOLE = {
    "live": {"orderId": 1, "clientOrderId": "live", "status": "new", "side": "sell",
             "price": "105", "quantity": "1", "filledQuantity": "0",
             "remainingQuantity": "1"},
    "done": {"orderId": 2, "clientOrderId": "done", "status": "canceled", "side": "sell",
             "price": "107", "quantity": "1", "filledQuantity": "0", "remainingQuantity": "0",
             "reason": "user"},
    "refused": {"orderId": 0, "clientOrderId": "refused", "status": "rejected",
                "filledQuantity": "0", "remainingQuantity": "0", "code": 206,
                "name": "OUTSIDE_PRICE_BAND",
                "reason": "price is more than 10% from the reference price 100"},
}
"""Whole orders, as both the engine and PostgreSQL describe them."""


def test_status_by_client_order_id_from_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            accepted = await play(exchange, alice)
            assert len(exchange.services["sol-usdt"].memory), "the engine answers from memory"
            answers = {client_order_id: described(await status(alice, client_order_id))
                       for client_order_id in EXPECTED}
            assert answers == expected(accepted)
            whole = await whole_orders(alice)
            assert {key: whole[key] for key in WHOLE} == WHOLE

    run(scenario())


def test_status_by_client_order_id_from_postgres(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            recorder = Recorder(exchange.nc, pool, SOL)
            history = History(exchange.nc, pool, SOL)
            await history.start()
            task = asyncio.create_task(recorder.run())
            try:
                accepted = await play(exchange, alice)
                await eventually(lambda: recorder.command_sequence == len(STEPS),
                                 timeout=15, what="the recorder catching up")
                recorded = {client_order_id: described(await history.order(
                    OrderQuery("alice", client_order_id=client_order_id)))
                    for client_order_id in EXPECTED}  # open orders too
                assert recorded == expected(accepted)
                from_engine = await whole_orders(alice)
                service = exchange.services["sol-usdt"]
                service.memory.forget()  # as after a restart from a snapshot
                answers = {client_order_id: described(await status(alice, client_order_id))
                           for client_order_id in EXPECTED}  # through the gateway
                assert answers == expected(accepted)
                # PostgreSQL describes every order whole, as the engine did
                assert await whole_orders(alice) == from_engine
                # and a cancel retried once the engine forgot the order answers it as it is
                again = await alice.cancel("sol-usdt", client_order_id="done")
                assert msgspec.to_builtins(again.order) == from_engine["done"]
                assert again.events == []
                with pytest.raises(RequestError) as refused:
                    await alice.replace("sol-usdt", client_order_id="done", price="100")
                assert refused.value.code == 914
                assert msgspec.to_builtins(refused.value.order) == from_engine["done"]
                with pytest.raises(RequestError) as unknown:
                    await alice.cancel("sol-usdt", client_order_id="never")
                assert unknown.value.code == 301
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await history.stop()
        await pool.close()

    run(scenario())
