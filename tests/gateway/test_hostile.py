"""Malformed and hostile requests get error replies with stable codes, and cost nothing:
the gateway keeps serving, and well-formed traffic sent at the same time all lands."""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from tests.support.exchange import SOL, local_exchange, run
from tradeplane_engine.access import trader_inbox
from tradeplane_engine.store.database import open_database
from tradeplane_engine.wire import decode_grouped
from tradeplane_gateway import connect
from tradeplane_gateway.protocol import REQUESTS, decode_reply

VALID = {"market": "sol-usdt", "side": "buy", "quantity": "1", "price": "99"}
MARKET_BUY = {"market": "sol-usdt", "side": "buy", "type": "market", "quoteAmount": "10"}


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


SEQUENCED = {205, 206, 301}
"""Codes only the engine gives: the command was sequenced, then refused. Every other
refusal in the table happens at the edge, and nothing reaches the command stream."""

HOSTILE: list[tuple[str, str, bytes, int]] = [
    ("garbage bytes", "place", bytes(range(256)), 901),
    ("truncated JSON", "place", b'{"market": "sol-usdt", "side": ', 901),
    ("empty payload", "place", b"", 901),
    ("not an object", "place", b'["sol-usdt", "buy"]', 903),
    ("huge payload", "place", b'{"market": "' + b"x" * 100_000 + b'"}', 904),
    ("unknown field", "place", json.dumps({**VALID, "leverage": 100}).encode(), 902),
    ("number for a decimal", "place", json.dumps({**VALID, "quantity": 1.5}).encode(), 903),
    ("missing side", "place", json.dumps({"market": "sol-usdt", "price": "1"}).encode(), 903),
    ("unknown side", "place", json.dumps({**VALID, "side": "short"}).encode(), 903),
    ("unknown market", "place", json.dumps({**VALID, "market": "doge-usdt"}).encode(), 905),
    ("negative quantity", "place", json.dumps({**VALID, "quantity": "-1"}).encode(), 201),
    ("zero price", "place", json.dumps({**VALID, "price": "0"}).encode(), 202),
    ("NaN price", "place", json.dumps({**VALID, "price": "NaN"}).encode(), 202),
    ("infinite quantity", "place", json.dumps({**VALID, "quantity": "Infinity"}).encode(), 201),
    ("exponent price", "place", json.dumps({**VALID, "price": "1e3"}).encode(), 202),
    ("price off tick", "place", json.dumps({**VALID, "price": "99.001"}).encode(), 203),
    ("quantity off lot", "place", json.dumps({**VALID, "quantity": "0.001"}).encode(), 204),
    ("below min notional", "place",
     json.dumps({**VALID, "quantity": "0.01", "price": "50"}).encode(), 205),
    ("outside price band", "place", json.dumps({**VALID, "price": "200"}).encode(), 206),
    ("limit without price", "place",
     json.dumps({"market": "sol-usdt", "side": "buy", "quantity": "1"}).encode(), 903),
    ("absurd quantity", "place", json.dumps({**VALID, "quantity": "9" * 60}).encode(), 201),
    ("bad client order id", "place",
     json.dumps({**VALID, "clientOrderId": "a b\u0000c"}).encode(), 908),
    ("cancel naming nothing", "cancel", json.dumps({"market": "sol-usdt"}).encode(), 903),
    ("cancel naming both", "cancel",
     json.dumps({"market": "sol-usdt", "orderId": 1, "clientOrderId": "x"}).encode(), 903),
    ("cancel of an unknown order", "cancel",
     json.dumps({"market": "sol-usdt", "orderId": 424242}).encode(), 301),
    ("replace changing nothing", "replace",
     json.dumps({"market": "sol-usdt", "orderId": 1}).encode(), 903),
    ("unknown verb", "liquidate", b"{}", 907),
    ("wrong response mode", "place", json.dumps({**VALID, "response": "later"}).encode(), 903),
    ("boolean for a string", "place", json.dumps({**VALID, "price": True}).encode(), 903),
    ("nested object", "place", json.dumps({**VALID, "side": {"$ne": 1}}).encode(), 903),
    # decimal strings: one grammar, 0|[1-9][0-9]* then optionally . and digits
    ("plus-signed quantity", "place", _body(**{**VALID, "quantity": "+1"}), 201),
    ("plus-signed price", "place", _body(**{**VALID, "price": "+99"}), 202),
    ("no digit before the point", "place", _body(**{**VALID, "quantity": ".5"}), 201),
    ("no digit after the point", "place", _body(**{**VALID, "price": "99."}), 202),
    ("leading zero", "place", _body(**{**VALID, "quantity": "0138"}), 201),
    ("leading zeros before the point", "place", _body(**{**VALID, "price": "00.5"}), 202),
    ("negative zero", "place", _body(**{**VALID, "quantity": "-0"}), 201),
    ("space around a decimal", "place", _body(**{**VALID, "price": "99 "}), 202),
    ("underscore in a decimal", "place", _body(**{**VALID, "quantity": "1_0"}), 201),
    ("hexadecimal price", "place", _body(**{**VALID, "price": "0x63"}), 202),
    ("fullwidth digits", "place", _body(**{**VALID, "quantity": "\uff11"}), 201),
    ("plus-signed quote amount", "place", _body(**{**MARKET_BUY, "quoteAmount": "+10"}), 201),
    ("bare-point quote amount", "place", _body(**{**MARKET_BUY, "quoteAmount": ".5"}), 201),
    ("replace to a signed price", "replace",
     _body(market="sol-usdt", orderId=1, price="+99"), 202),
    ("replace to a bare-point quantity", "replace",
     _body(market="sol-usdt", orderId=1, quantity="1."), 201),
    # integers: ids 1 to 2^53 - 1, limit 1 to 500
    ("trades before 2^70", "trades", _body(market="sol-usdt", before=2**70), 903),
    ("trades before 2^53", "trades", _body(market="sol-usdt", before=2**53), 903),
    ("trades before 0", "trades", _body(market="sol-usdt", before=0), 903),
    ("trades limit 0", "trades", _body(market="sol-usdt", limit=0), 903),
    ("trades limit 501", "trades", _body(market="sol-usdt", limit=501), 903),
    ("trades limit as a string", "trades", _body(market="sol-usdt", limit="10"), 903),
    ("cancel orderId 2^70", "cancel", _body(market="sol-usdt", orderId=2**70), 903),
    ("cancel orderId 0", "cancel", _body(market="sol-usdt", orderId=0), 903),
    ("cancel orderId true", "cancel", _body(market="sol-usdt", orderId=True), 903),
    ("replace orderId -5", "replace", _body(market="sol-usdt", orderId=-5, price="99"), 903),
    ("status orderId 2^64", "status", _body(market="sol-usdt", orderId=2**64), 903),
    # fields that do not go together: refused at the edge, not sequenced
    ("limit without quantity", "place", _body(market="sol-usdt", side="buy", price="99"), 903),
    ("limit with a quote amount", "place", _body(**{**VALID, "quoteAmount": "10"}), 903),
    ("post-only IOC", "place", _body(**VALID, postOnly=True, timeInForce="IOC"), 903),
    ("market order with a price", "place",
     _body(market="sol-usdt", side="buy", type="market", quantity="1", price="99"), 903),
    ("post-only market order", "place",
     _body(market="sol-usdt", side="buy", type="market", quantity="1", postOnly=True), 903),
    ("market order with no amount", "place",
     _body(market="sol-usdt", side="buy", type="market"), 903),
    ("market order with quantity and quote amount", "place",
     _body(**MARKET_BUY, quantity="1"), 903),
    ("market sell by quote amount", "place", _body(**{**MARKET_BUY, "side": "sell"}), 903),
    ("market buy by quote amount, FOK", "place", _body(**MARKET_BUY, timeInForce="FOK"), 903),
    # a key twice, in any object: refused before any field is read
    ("side given twice", "place",
     b'{"market": "sol-usdt", "side": "buy", "side": "sell", "quantity": "1", "price": "99"}',
     903),
    ("side given twice, once escaped", "place",
     b'{"market": "sol-usdt", "side": "buy", "s\\u0069de": "sell", "quantity": "1",'
     b' "price": "99"}', 903),
    ("same key, same value", "cancel",
     b'{"market": "sol-usdt", "orderId": 1, "orderId": 1}', 903),
    ("key twice in a nested object", "place",
     b'{"market": "sol-usdt", "side": "buy", "x": {"a": 1, "a": 2}}', 903),
    ("key twice in an array's object", "trades",
     b'{"market": "sol-usdt", "x": [{"a": 1}, {"b": 1, "b": 2}]}', 903),
]


@pytest.mark.parametrize(("verb", "payload", "code"),
                         [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_request_gets_its_code(tmp_path: Path, verb: str, payload: bytes,
                                       code: int) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                exchange.raw_trader("mallory") as mallory:
            js = exchange.nc.jetstream()
            before = (await js.stream_info("tp-cmd-sol-usdt")).state.last_seq
            answer = await mallory.request(f"tp.api.mallory.order.{verb}", payload,
                                               timeout=5)
            reply = decode_reply(answer.data)
            assert not reply.ok
            assert reply.error is not None
            assert reply.error.code == code, reply.error
            assert reply.error.name
            assert reply.error.reason
            after = (await js.stream_info("tp-cmd-sol-usdt")).state.last_seq
            assert after == before + (code in SEQUENCED)  # nothing else reached the stream
            assert (reply.sequence is not None) is (code in SEQUENCED)

    run(scenario())


# (what, subject): under the trader's own tp.api.<account>. (so NATS lets it publish
# there), but no request: each is answered 907 UNKNOWN_REQUEST.
SUBJECTS: list[tuple[str, str]] = [
    ("too few tokens", "tp.api.mallory.order"),
    ("too many tokens", "tp.api.mallory.order.place.extra"),
    ("another account's token inside", "tp.api.mallory.bob.order.place"),
    ("unknown namespace and verb", "tp.api.mallory.foo.bar"),
    ("account token only", "tp.api.mallory.place"),
]


def unknown_verb_refusals() -> float:
    return REGISTRY.get_sample_value("tradeplane_gateway_requests_total", {
        "market": "unknown", "verb": "unknown", "type": "none", "result": "rejected"}) or 0.0


def verbs_counted() -> set[str]:
    return {sample.labels["verb"] for family in REGISTRY.collect()
            if family.name == "tradeplane_gateway_requests" for sample in family.samples}


@pytest.mark.parametrize("subject", [case[1] for case in SUBJECTS],
                         ids=[case[0] for case in SUBJECTS])
def test_a_subject_that_names_no_request_gets_907(tmp_path: Path, subject: str) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                exchange.raw_trader("mallory") as mallory:
            before = unknown_verb_refusals()
            answer = await mallory.request(subject, json.dumps(VALID).encode(), timeout=5)
            reply = json.loads(answer.data)
            assert reply == {"ok": False, "error": {
                "code": 907, "name": "UNKNOWN_REQUEST", "reason": reply["error"]["reason"]}}
            assert subject in reply["error"]["reason"]
            assert "tp.api.<account>.order.<verb>" in reply["error"]["reason"]
            # Counted once, under the verb "unknown": a subject never becomes a label.
            assert unknown_verb_refusals() == before + 1
            assert verbs_counted() <= {*REQUESTS, "unknown"}
            # Nothing was sequenced, and the gateway serves on.
            placed = await mallory.request("tp.api.mallory.order.place",
                                           json.dumps(VALID).encode(), timeout=5)
            assert decode_reply(placed.data).sequence == 1

    run(scenario())


def test_a_snapshot_of_an_unknown_market_is_answered_by_a_gateway(tmp_path: Path) -> None:
    """The gateways answer what no engine serves; a market's own engine answers for it."""

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                exchange.raw_trader("mallory") as mallory:
            answer = await mallory.request("tp.md.nosuch.book.snapshot", b"", timeout=5)
            assert json.loads(answer.data) == {"error": "unknown market", "market": "nosuch"}
            answer = await mallory.request("tp.md.sol-usdt.book.snapshot", b"", timeout=5)
            assert json.loads(answer.data) == {"market": "sol-usdt", "sequence": 0,
                                               "mode": "open", "bids": [], "asks": []}

    run(scenario())


def test_a_snapshot_of_a_known_market_without_a_leader_is_not_answered(
        tmp_path: Path) -> None:
    """A market the gateways know is its engine's to answer: while none leads (a
    failover), a snapshot request times out, and the client asks again."""

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False) as exchange, \
                exchange.raw_trader("mallory") as mallory:
            await exchange.markets.wait_for("sol-usdt")
            with pytest.raises(nats.errors.TimeoutError):
                await mallory.request("tp.md.sol-usdt.book.snapshot", b"", timeout=0.5)

    run(scenario())


def test_a_trader_gets_an_answer_for_whatever_it_may_publish(tmp_path: Path,
                                                             database: str) -> None:
    """With a real trader's permissions: every subject it may publish is answered."""

    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, accounts_pool=pool) as exchange:
                login = json.loads((await exchange.issue(pool, "mallory", tmp_path)).read_text())
                nc = await nats.connect(exchange.server.url, user=login["user"],
                                        password=login["password"],
                                        inbox_prefix=trader_inbox("mallory"))
                try:
                    for _, subject in SUBJECTS:
                        answer = await nc.request(subject, b"{}", timeout=5)
                        error = decode_reply(answer.data).error
                        assert error is not None
                        assert error.code == 907, subject
                    answer = await nc.request("tp.md.nosuch.book.snapshot", b"", timeout=5)
                    assert json.loads(answer.data) == {"error": "unknown market",
                                                       "market": "nosuch"}
                finally:
                    await nc.close()
        finally:
            await pool.close()

    run(scenario())


def test_an_invalid_account_in_the_subject_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                exchange.raw_trader("a%20b") as intruder:
            answer = await intruder.request("tp.api.a%20b.order.place",
                                               json.dumps(VALID).encode(), timeout=5)
            reply = decode_reply(answer.data)
            assert reply.error is not None
            assert reply.error.code == 906

    run(scenario())


def test_hostile_traffic_does_not_disturb_well_formed_orders(tmp_path: Path) -> None:
    """Hundreds of bad requests interleaved with 200 good ones: every good one lands."""

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice, \
                exchange.raw_trader("mallory") as mallory:
            async def good(number: int) -> int:
                reply = await alice.place("sol-usdt", "buy", "0.1", str(95 + number % 5),
                                          client_order_id=f"good-{number}")
                assert reply.sequence is not None
                return reply.sequence

            async def bad(number: int) -> None:
                _, verb, payload, code = HOSTILE[number % len(HOSTILE)]
                answer = await mallory.request(f"tp.api.mallory.order.{verb}", payload,
                                               timeout=10)
                assert decode_reply(answer.data).error.code == code  # type: ignore[union-attr]

            results = await asyncio.gather(*(good(n) for n in range(200)),
                                           *(bad(n) for n in range(600)))
            good_sequences = [result for result in results if result is not None]
            assert len(set(good_sequences)) == 200
            service = exchange.services["sol-usdt"]
            answer = await mallory.request("tp.md.sol-usdt.book.snapshot", b"", timeout=5)
            book = msgspec.json.decode(answer.data)
            assert sum(Decimal(quantity) for _, quantity in book["bids"]) == Decimal("20")
            opened = [order for order in service.engine.l3().bids if order.account == "alice"]
            assert len(opened) == 200

    run(scenario())


def test_results_come_grouped_and_what_is_not_results_is_skipped(tmp_path: Path) -> None:
    """The engine answers the gateway's commands of one batch in one message on the
    gateway's ``.g`` inbox (``wire.GROUPED``); what arrives there and is not results is
    counted and skipped, and a result for no request in flight is ignored."""
    def skipped() -> float:
        return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
            "component": "gateway", "what": "grouped answers"}) or 0.0

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            grouped = f"{exchange.gateway.inbox}.g"
            seen: list[int] = []

            async def on_grouped(msg: Msg) -> None:
                with contextlib.suppress(msgspec.DecodeError):
                    seen.append(len(decode_grouped(msg.data)))

            watch = await exchange.nc.subscribe(grouped, cb=on_grouped)
            await exchange.nc.flush()  # the subscription is in place before anything comes
            before = skipped()
            await exchange.engine_nc.publish(grouped, b"not results")
            await exchange.engine_nc.publish(grouped, b'[{"token":"0","answer":{}}]')
            await exchange.engine_nc.flush()
            replies = await asyncio.gather(*[
                alice.place("sol-usdt", "buy", "1", str(90 + number % 5))
                for number in range(40)])
            assert all(reply.ok and reply.order is not None for reply in replies)
            assert skipped() == before + 1
            await exchange.nc.flush()
            await watch.unsubscribe()
            # Every result came grouped, beside the forged message of one result.
            assert sum(seen) == 40 + 1

    run(scenario())
