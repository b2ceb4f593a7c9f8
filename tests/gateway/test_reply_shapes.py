"""docs/protocol.md's reply shapes are the contract: every reply and message of a whole
session — every verb, results and refusals, a duplicate, the recorder's answers, private
updates, market data, a snapshot — has exactly the fields the doc lists for its shape,
of the documented types, and the doc lists exactly the fields the code can send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import msgspec

from tests.support.exchange import SOL, Exchange, eventually, local_exchange, run
from tradeplane_engine.service.ledger_path import AccountBalances
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.queries import History
from tradeplane_engine.store.recorder import Recorder
from tradeplane_gateway.protocol import Balance, ErrorBody, Fill, OrderState, Reply

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ASSETS = {"SOL": 8, "USDT": 8}
"""Balances are on in the session, as with ``tradeplane up``."""
DECIMAL = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")

Shapes = dict[str, dict[str, tuple[str, bool]]]
"""Shape name -> field -> (type, always present)."""


def documented_shapes() -> Shapes:
    text = PROTOCOL.read_text().split("## Reply shapes", 1)[1]
    shapes: Shapes = {}
    for section in text.split("\n### ")[1:]:
        name = section.split("\n", 1)[0].strip()
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", section, flags=re.M)
        shapes[name] = {field: (kind.strip(), present.strip().startswith("always"))
                        for field, kind, present in rows}
    return shapes


SHAPES = documented_shapes()


def check(value: Any, kind: str, where: str) -> None:
    """``value`` is of the documented ``kind`` (a type or a shape), recursively."""
    if kind.startswith("{"):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        for key, item in value.items():
            check(item, kind[1:-1], f"{where}.{key}")
    elif kind.startswith("["):
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for index, item in enumerate(value):
            check(item, kind[1:-1], f"{where}[{index}]")
    elif kind == "Level":
        assert isinstance(value, list), f"{where}: {value!r}"
        assert len(value) == 2, f"{where}: {value!r}"
        for item in value:
            check(item, "decimal", where)
    elif kind == "decimal":
        assert isinstance(value, str), f"{where}: {value!r} is not a decimal string"
        assert DECIMAL.match(value), f"{where}: {value!r} is not a decimal string"
    elif kind == "integer":
        assert isinstance(value, int), f"{where}: {value!r} is not an integer"
        assert not isinstance(value, bool), f"{where}: {value!r} is not an integer"
    elif kind in ("string", "boolean"):
        assert isinstance(value, str if kind == "string" else bool), f"{where}: {value!r}"
    else:
        check_shape(value, kind, where)


def check_shape(value: Any, shape: str, where: str) -> None:
    assert isinstance(value, dict), f"{where}: {value!r} is not an object"
    if shape == "Event":
        shape = f"Event {value.get('type')}"
    assert shape in SHAPES, f"{where}: no documented shape {shape!r}"
    fields = SHAPES[shape]
    undocumented = set(value) - set(fields)
    assert not undocumented, f"{where}: {shape} has undocumented fields {undocumented}"
    for field, (kind, always) in fields.items():
        if always:
            assert field in value, f"{where}: {shape} lacks {field!r}: {value}"
        if field in value:
            check(value[field], kind, f"{where}.{field}")


def test_the_doc_lists_exactly_the_fields_the_code_can_send() -> None:
    def fields(struct: type[msgspec.Struct]) -> set[str]:
        return {field.encode_name for field in msgspec.structs.fields(struct)}

    assert set(SHAPES["Reply"]) == fields(Reply)
    assert set(SHAPES["Order"]) == fields(OrderState)
    assert set(SHAPES["Fill"]) == fields(Fill)
    assert set(SHAPES["Error"]) == fields(ErrorBody)
    assert set(SHAPES["Balance"]) == fields(Balance)
    assert set(SHAPES["AccountBalances"]) == fields(AccountBalances)


class Session:
    """One account's requests on a plain NATS connection, every reply kept."""

    def __init__(self, exchange: Exchange, nc: Any, account: str) -> None:
        self.exchange = exchange
        self.nc = nc
        self.account = account
        self.replies: list[tuple[str, dict[str, Any]]] = []

    async def call(self, verb: str, **body: Any) -> dict[str, Any]:
        message = await self.nc.request(f"tp.api.{self.account}.order.{verb}",
                                        json.dumps({"market": "sol-usdt", **body}).encode(),
                                        timeout=10)
        reply: dict[str, Any] = json.loads(message.data)
        self.replies.append((f"{self.account} {verb} {body}", reply))
        return reply

    async def balances(self) -> dict[str, Any]:
        message = await self.nc.request(f"tp.api.{self.account}.account.balances", b"{}",
                                        timeout=10)
        reply: dict[str, Any] = json.loads(message.data)
        self.replies.append((f"{self.account} balances", reply))
        return reply


def test_every_reply_and_message_of_a_session_has_its_documented_shape(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                exchange.raw_trader("alice") as alice_nc, exchange.raw_trader("bob") as bob_nc:
            for account in ("alice", "bob"):
                await exchange.fund(account, SOL=100 * 10**8, USDT=10_000 * 10**8)
            recorder = Recorder(exchange.nc, pool, SOL)
            history = History(exchange.nc, pool, SOL)
            await history.start()
            recording = asyncio.create_task(recorder.run())
            messages: list[tuple[str, Any]] = []

            async def keep(msg: Any) -> None:
                messages.append((msg.subject, json.loads(msg.data)))
            for subject in ("tp.acct.alice.orders", "tp.acct.bob.orders",
                            "tp.acct.alice.balances", "tp.md.sol-usdt.trades",
                            "tp.md.sol-usdt.book"):
                await exchange.nc.subscribe(subject, cb=keep)
            await exchange.nc.flush()
            alice, bob = Session(exchange, alice_nc, "alice"), Session(exchange, bob_nc, "bob")
            try:
                await play(alice, bob)
                commands = (await exchange.nc.jetstream().stream_info(
                    "tp-cmd-sol-usdt")).state.last_seq
                await eventually(lambda: recorder.position >= commands, 15,
                                 f"the recorder writing all {commands} commands' events")
                page = await bob.call("trades", limit=1)
                assert "next" in page
                await bob.call("trades")
                await alice.call("status", clientOrderId="too-small")  # from PostgreSQL
                service = exchange.services["sol-usdt"]
                service.memory.forget()  # as after a restart: finished orders from PostgreSQL
                await alice.call("status", clientOrderId="a-1")
                snapshot = json.loads((await alice_nc.request(
                    "tp.md.sol-usdt.book.snapshot", b"", timeout=5)).data)
            finally:
                recording.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recording
                await history.stop()
        await pool.close()

        replies = alice.replies + bob.replies
        for request, reply in replies:
            check_shape(reply, "Reply", request)
        check_shape(snapshot, "Snapshot", "snapshot")
        shape_of = {"orders": "AccountUpdate", "balances": "AccountBalances",
                    "trades": "PublicTrades", "book": "BookDelta"}
        for subject, message in messages:
            check_shape(message, shape_of[subject.split(".")[-1]], subject)
        orders = [reply["order"] for _, reply in replies if "order" in reply]
        orders += [order for _, reply in replies for order in reply.get("orders", [])]
        assert all("side" in order for order in orders if order["status"] != "rejected")
        # The session covered what it claims: each kind of reply and message was seen.
        codes = {reply["error"]["code"] for _, reply in replies if "error" in reply}
        assert codes >= {203, 205, 301, 501, 913, 914}
        kinds = {kind for _, reply in replies for kind in reply}
        assert kinds >= set(SHAPES["Reply"]), set(SHAPES["Reply"]) - kinds
        events = {event["type"] for _, body in [*replies, *messages]
                  for event in body.get("events", [])}
        assert events >= {name.split()[1] for name in SHAPES if name.startswith("Event ")}
        assert {subject.split(".")[-1] for subject, _ in messages} >= {
            "orders", "balances", "trades", "book"}

    run(scenario(), timeout=120)


async def play(alice: Session, bob: Session) -> None:
    """Every verb, answered and refused, with results, an ack, a duplicate (SOL's price
    band is 90-110)."""
    await alice.call("place", side="sell", quantity="2", price="100.5", clientOrderId="a-1")
    await alice.call("place", side="sell", quantity="1", price="102", clientOrderId="a-2",
                     response="ack")
    await alice.call("place", side="sell", quantity="2", price="100.5", clientOrderId="a-1")
    await bob.call("place", side="buy", quantity="0.5", price="101")
    await bob.call("place", side="buy", type="market", quoteAmount="10")
    await alice.call("place", side="buy", quantity="0.01", price="95",
                     clientOrderId="too-small")  # under minNotional: the engine refuses it
    await alice.call("place", side="buy", quantity="1", price="100.001")  # off tick: the edge
    await alice.call("place", side="buy", quantity="1", price="99", timeInForce="FOK",
                     clientOrderId="a-fok")  # nothing to fill it: killed
    await alice.call("replace", clientOrderId="a-2", price="103")
    await alice.call("status", clientOrderId="a-1")
    await alice.call("status", orderId=999)
    await alice.call("openOrders")
    await alice.call("cancel", clientOrderId="a-2")
    await alice.call("cancel", clientOrderId="a-2")  # retried: the order as it is
    await alice.call("replace", clientOrderId="a-2", price="104")  # 914: not open
    await alice.call("place", side="sell", quantity="2", price="100.6",
                     clientOrderId="a-1")  # 913: a retry with another body
    await alice.call("cancelAll")
    await alice.balances()
    await bob.call("place", side="buy", quantity="100000", price="101")  # 501: unfunded
    await alice.call("place", side="sell", quantity="1", price="99", clientOrderId="a-3")
    await bob.call("place", side="buy", quantity="1", price="99")
