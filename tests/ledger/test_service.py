"""Balances through the whole order path, on a real nats-server: the gateway funds each
order at its account's ledger shard, the shard forwards it to its market, and settles
the market's events (docs/ledger.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane.ledger_tools import stored_outcome, submit
from tradeplane_engine.access import GATEWAY_INBOX
from tradeplane_engine.core import Place, RejectCode, Side
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.ledger import (
    Deposit,
    Forward,
    Funded,
    FundOrder,
    FundOrders,
    Ledger,
    Report,
)
from tradeplane_engine.service.ledger import LedgerService, settle_groups
from tradeplane_engine.service.ledger_path import event_messages, fundings, together_message_id
from tradeplane_engine.service.replica import Outgoing
from tradeplane_engine.streams import ensure_market_streams, markets_bucket
from tradeplane_engine.wire import (
    HEADER_COMMANDS,
    HEADER_FUNDED,
    HEADER_MESSAGE_ID,
    HEADER_REFUSED,
    HEADER_REPLY,
    MARKETS_BUCKET,
    LedgerBatch,
    LedgerSource,
    command_subject,
    decode_commands,
    decode_ledger_command,
    decode_ledger_events,
    decode_pub_ack,
    encode_command,
    encode_ledger_command,
    encode_ledger_events,
    ledger_command_stream,
    ledger_command_subject,
)
from tradeplane_gateway import RequestError, connect
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.protocol import Balance
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

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
            assert ask.ok
            assert ask.order is not None
            assert ask.sequence is not None
            await eventually(lambda: ledger.balance("bob", "SOL") == (3 * SOL_UNIT,
                                                                      2 * SOL_UNIT),
                             what="the ask's hold")
            take = await alice.place("sol-usdt", "buy", "1.5", "101")
            assert take.order is not None
            assert take.order.status == "filled"
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
            # A deposit after the orders, found again in the events stream (where its
            # message ends), and a retry of it answered with that first outcome.
            deposit = Deposit(0, 0, transfer_id="late", account="bob", asset="SOL",
                              amount=7)
            first = await submit(exchange.nc, 0, deposit)
            assert not first.again
            assert await stored_outcome(exchange.nc, 0, first.batch.sequence) == first.batch
            retried = await submit(exchange.nc, 0, deposit)
            assert retried == (first.batch, True)
            assert ledger.balance("bob", "SOL") == (35_007, 0)

    run(scenario())


def test_a_trader_reads_its_balances_and_their_updates(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=2, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice:
            updates = alice.balance_updates()
            first = asyncio.ensure_future(anext(updates))
            await exchange.nc.flush()
            await exchange.fund("alice", USDT=250 * USDT)
            assert (await first)["balances"]["USDT"] == {"available": "250", "held": "0"}
            await alice.place("sol-usdt", "buy", "1", "100", client_order_id="b")
            assert await alice.balances() == {"USDT": Balance("150", "100")}
            update = await anext(updates)
            assert update["account"] == "alice"
            assert update["balances"]["USDT"] == {"available": "150", "held": "100"}
            await updates.aclose()

    run(scenario())


def test_balances_on_an_exchange_without_a_ledger_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            with pytest.raises(RequestError) as refused:
                await alice.balances()
            assert refused.value.code == EdgeCode.BALANCES_UNAVAILABLE

    run(scenario())


def test_a_retried_order_is_held_once_and_a_dropped_one_gives_its_hold_back(
        tmp_path: Path) -> None:
    """A retry gets the original's answer and is held once. A new order under the id of
    one that ended, within the duplicate window, is not placed (913, as without
    balances): the market's stream dropped it, and the ledger gives its hold back."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await exchange.fund("alice", USDT=1_000 * USDT)
            ledger = exchange.ledgers[0].ledger
            first = await alice.place("sol-usdt", "buy", "1", "100", client_order_id="b1")
            again = await alice.place("sol-usdt", "buy", "1", "100", client_order_id="b1")
            assert again.duplicate
            assert again.sequence == first.sequence
            assert ledger.balance("alice", "USDT") == (900 * USDT, 100 * USDT)
            assert first.order is not None
            await alice.cancel("sol-usdt", first.order.order_id)
            await eventually(lambda: ledger.balance("alice", "USDT") == (1_000 * USDT, 0),
                             what="the cancel's release")
            with pytest.raises(RequestError) as reused:
                await alice.place("sol-usdt", "buy", "2", "100", client_order_id="b1")
            assert reused.value.code == EdgeCode.DUPLICATE_MISMATCH  # not placed
            await eventually(lambda: ledger.balance("alice", "USDT") == (1_000 * USDT, 0),
                             what="the dropped order's hold given back")
            assert not ledger.orders
            assert ledger.audit() == []

    run(scenario())


INBOX = f"{GATEWAY_INBOX}.test"
"""A gateway's inbox, as a test plays the gateway."""


async def answers_on(nc: Client, inbox: str) -> dict[str, Msg]:
    """Every answer that comes to ``<inbox>.ack.<n>``, by its subject."""
    answers: dict[str, Msg] = {}

    async def answered(msg: Msg) -> None:
        answers[msg.subject] = msg

    await nc.subscribe(f"{INBOX}.ack.*", cb=answered)
    return answers


def buys(prefix: str, count: int, trader_named: int | None = None) -> list[Funded]:
    """Alice's buys of 1 SOL at 1 USDT (100 USDT each), ``<prefix><n>``, answered on
    ``INBOX``; with ``trader_named``, the gateway named every one but that one."""
    return [Funded("sol-usdt", Place(0, 0, account="alice", side=Side.BUY, price=10_000,
                                     quantity=100, client_order_id=f"{prefix}{number}"),
                   ack=f"{INBOX}.ack.{number}", reply=f"{INBOX}.result.{number}",
                   named_by_gateway=trader_named is not None and number != trader_named)
            for number in range(count)]


def test_a_fund_orders_answers_and_forwards_each_order_as_its_own(tmp_path: Path) -> None:
    """Three orders in one ``fundOrders``, as a gateway sends what it read together: each
    is forwarded with its own result subject and funding name, and each acknowledgement
    or refusal goes to its own subject."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange:
            await exchange.fund("alice", USDT=250 * USDT)
            nc = await nats.connect(exchange.url)
            answers = await answers_on(nc, INBOX)
            orders = buys("f", 3)  # 100 USDT each: the third is not covered
            stored = await nc.jetstream().publish(
                ledger_command_subject(0, LedgerSource.ORDER),
                encode_ledger_command(FundOrders(0, 0, orders=orders)))
            await eventually(lambda: len(answers) == 3, what="an answer to each order")
            assert HEADER_REFUSED in (answers[f"{INBOX}.ack.2"].headers or {})
            assert msgspec.json.decode(answers[f"{INBOX}.ack.2"].data)["code"] == int(
                RejectCode.INSUFFICIENT_FUNDS)
            forwarded = [msgspec.json.decode(answers[f"{INBOX}.ack.{number}"].data)["seq"]
                         for number in range(2)]
            js = nc.jetstream()
            for number, sequence in enumerate(forwarded):
                message = await js.get_msg("tp-cmd-sol-usdt", sequence)
                headers = message.headers or {}
                assert headers[HEADER_REPLY] == f"{INBOX}.result.{number}"
                assert headers[HEADER_FUNDED] == (f"0:{stored.seq}" if number == 0
                                                  else f"0:{stored.seq}-{number}")
                assert headers[HEADER_MESSAGE_ID] == f"alice:f{number}"
            ledger = exchange.ledgers[0].ledger
            assert ledger.balance("alice", "USDT") == (50 * USDT, 200 * USDT)
            await nc.close()

    run(scenario())


def test_orders_sent_together_are_each_answered_and_a_replace_follows_its_order(
        tmp_path: Path) -> None:
    """Orders a gateway reads together are funded together (``fundOrders``); each still
    gets its own answer, and a replace sent right behind its order reaches the ledger
    after it (the gateway sends the orders it holds for the shard first)."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await exchange.fund("alice", USDT=1_000 * USDT)
            places = [alice.place("sol-usdt", "buy", "1", f"{95 + number}",
                                  client_order_id=f"t{number}") for number in range(6)]
            replace = alice.replace("sol-usdt", client_order_id="t5", price="91")
            replies = await asyncio.gather(*places, replace)
            assert [reply.order.client_order_id for reply in replies[:6]
                    if reply.order is not None] == [f"t{number}" for number in range(6)]
            assert replies[6].order is not None
            assert replies[6].order.price == "91"
            ledger = exchange.ledgers[0].ledger
            # 95 + ... + 99 and 91 (no fees on this market): each held once.
            held = (95 + 96 + 97 + 98 + 99 + 91) * USDT
            await eventually(lambda: ledger.balance("alice", "USDT") == (
                1_000 * USDT - held, held), what="the holds settled to the orders' needs")
            assert ledger.audit() == []

    run(scenario())


def test_only_an_administrator_moves_funds(tmp_path: Path) -> None:
    """A gateway may send orders to fund, nothing else: a deposit on its subject is
    skipped by every replica (logged and counted), and NATS refuses it the
    administrator's. (A trader may publish under ``tp.api.<account>.`` only:
    tests/gateway/test_security.py.)"""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange:
            ledger = exchange.ledgers[0].ledger
            forged = encode_ledger_command(Deposit(0, 0, transfer_id="forged", account="mallory",
                                                   asset="USDT", amount=10**12))
            skipped = UNTRUSTED_SKIPPED.labels("ledger", "command source")
            before = skipped._value.get()
            violations: list[str] = []

            async def refused(error: Exception) -> None:
                violations.append(str(error))

            gateway = await nats.connect(exchange.server.url, error_cb=refused,
                                         **exchange.server.access("gateway").options())
            try:
                await gateway.publish(ledger_command_subject(0, LedgerSource.ORDER), forged)
                await gateway.flush()
                await eventually(lambda: skipped._value.get() == before + 1, 10,
                                 "the forged deposit skipped")
                await gateway.publish(ledger_command_subject(0, LedgerSource.ADMIN), forged)
                await gateway.flush()
                await eventually(lambda: bool(violations), 10, "a permission violation")
            finally:
                await gateway.close()
            assert "permissions violation" in violations[0].lower(), violations
            assert ledger.balance("mallory", "USDT") == (0, 0)
            assert ledger.audit() == []

    run(scenario())


STATUS_FIELDS = {"shard", "shards", "replica", "assets", "leading", "sequence", "settled",
                 "clearing", "fees", "deposited", "withdrawn", "decimals"}
"""``tp.ledger.<k>.status``'s answer (docs/ledger.md, "Status")."""


def test_a_shards_status_goes_over_its_whole_state_only_when_asked(tmp_path: Path) -> None:
    """Its state hash and audit go over the whole state in the shard's loop: only
    ``{"audit": true}`` asks for them. A body that is not a status request is answered
    with an error."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange:
            await exchange.fund("alice", USDT=5 * USDT)

            async def status(body: bytes) -> dict[str, object]:
                answer = await exchange.nc.request("tp.ledger.0.status", body, timeout=5)
                decoded: dict[str, object] = msgspec.json.decode(answer.data)
                return decoded

            plain = await status(b"")
            assert set(plain) == STATUS_FIELDS
            assert plain["leading"] is True
            assert plain["deposited"] == {"USDT": 5 * USDT}
            assert set(await status(b'{"audit":false}')) == STATUS_FIELDS
            audited = await status(b'{"audit":true}')
            assert set(audited) == STATUS_FIELDS | {"stateHash", "audit"}
            assert audited["audit"] == []
            assert audited["stateHash"] == exchange.ledgers[0].ledger.state_hash()
            skipped = UNTRUSTED_SKIPPED.labels("ledger", "status request")
            before = skipped._value.get()
            for bad in (b'{"audit":"yes"}', b'{"everything":true}', b"[", b" " * 70_000):
                refused = await status(bad)
                assert set(refused) == {"error"}, bad[:20]
            assert skipped._value.get() == before + 4

    run(scenario())


def test_settlements_are_grouped_under_a_size() -> None:
    reports = [Report(sequence, sequence, []) for sequence in range(1, 6)]
    sized = list(zip(reports, [100, 100, 300, 50, 500], strict=True))
    assert settle_groups(sized, limit=400) == [reports[:2], reports[2:4], reports[4:]]
    assert settle_groups(sized) == [reports]
    assert settle_groups([]) == []


def test_a_fund_orders_refused_whole_answers_each_order_and_forwards_none() -> None:
    """A ``fundOrders`` out of sequence gets one refusal for all its orders: each is
    answered with it (none forwarded), where its events otherwise split order by order."""
    inbox = f"{GATEWAY_INBOX}.g"
    orders = FundOrders(7, 0, orders=[
        Funded("m", Place(0, 0, account="a", side=Side.BUY, price=1, quantity=1,
                          client_order_id=f"o{number}"), ack=f"{inbox}.k.{number}")
        for number in range(3)])
    command = SequencedCommand(7, 0, encode_ledger_command(orders), None)
    ledger = Ledger()
    ledger.sequence = 9
    refused = ledger.apply(orders)
    assert [type(event).__name__ for event in refused] == ["Refused"]
    assert [(index, ack, own) for index, ack, _, _, own in fundings(command, orders, refused)] \
        == [(number, f"{inbox}.k.{number}", refused) for number in range(3)]
    # In sequence, each order has its own events, ending with its Forward or Refused.
    split = fundings(command, orders, [*refused, Forward("m", orders.orders[1].place),
                                       *refused])
    assert [[type(event).__name__ for event in own] for _, _, _, _, own in split] == [
        ["Refused"], ["Forward"], ["Refused"]]


def test_a_shards_events_are_grouped_and_end_at_an_administrators_command() -> None:
    """The leader publishes a batch's events in few messages, each under a size and each
    ending at an administrator's command, whose outcome ``tradeplane deposit`` reads
    from the message that ends at it."""
    fund = FundOrder(0, 0, market="m", place=Place(0, 0, account="a", side=Side.BUY,
                                                   price=1, quantity=1))
    deposit = Deposit(0, 0, transfer_id="t", account="a", asset="USDT", amount=1)
    kinds = [fund, fund, deposit, fund, fund, fund]
    outgoing: Outgoing = []
    for sequence, command in enumerate(kinds, start=1):
        payload = encode_ledger_events(LedgerBatch(0, sequence, sequence, []))
        outgoing.append((SequencedCommand(sequence, sequence, b"", None), payload,
                         (command, [])))
    size = len(outgoing[0][1])
    messages = event_messages(outgoing, limit=2 * size + 2)
    assert [last for last, _ in messages] == [2, 3, 5, 6]
    assert [[batch.sequence for batch in decode_ledger_events(data)]
            for _, data in messages] == [[1, 2], [3], [4, 5], [6]]
    assert [last for last, _ in event_messages(outgoing)] == [3, 6]


def test_a_market_retired_while_the_ledger_is_down_gives_its_holds_back(
        tmp_path: Path) -> None:
    """Retirement (cancel-only, every order canceled, the engines and the definition
    gone) does not wait for the ledger, and needs not: the market's streams stay, and
    the ledger settles the final cancellations once a replica leads again."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="bob") as bob:
            await exchange.fund("bob", SOL=5 * SOL_UNIT)
            ask = await bob.place("sol-usdt", "sell", "2", "100")
            assert ask.ok
            ledger = exchange.ledgers[0].ledger
            await eventually(lambda: ledger.balance("bob", "SOL") == (3 * SOL_UNIT,
                                                                      2 * SOL_UNIT),
                             what="the ask's hold")
            # The only ledger replica stops.
            task = exchange.tasks[-1]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The operator's retirement, as reconcile.retire does it.
            js = exchange.nc.jetstream()
            for step, command in (("cancelOnly", {"type": "setTradingMode",
                                                  "mode": "cancelOnly"}),
                                  ("cancelAll", {"type": "cancelAll", "account": None})):
                await js.publish(command_subject("sol-usdt"), msgspec.json.encode(
                    {**command, "sequence": 0, "timestamp": 0}),
                    headers={HEADER_MESSAGE_ID: f"sol-usdt:final-{step}"})
            engine = exchange.services["sol-usdt"]
            await eventually(lambda: engine.engine.l3().asks == [], what="the orders canceled")
            await eventually(lambda: engine.hot_path.published_through
                             == engine.engine.last_sequence, what="their events stored")
            await exchange.stop_engine("sol-usdt")
            await (await markets_bucket(js, SETTINGS)).delete("sol-usdt")

            ledger_nc = exchange.connections[-1]
            again = LedgerService(ledger_nc, 0, 1, SETTINGS)
            exchange.tasks.append(asyncio.create_task(again.run(
                await ledger_nc.jetstream().key_value(MARKETS_BUCKET))))
            await asyncio.wait_for(again.ready.wait(), 10)
            await eventually(lambda: again.ledger.balance("bob", "SOL") == (5 * SOL_UNIT, 0),
                             what="the final cancellation's release")
            assert again.ledger.audit() == []
            assert not again.ledger.orders

    run(scenario())


def test_orders_their_gateway_named_go_to_their_market_together_and_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The orders of a ``fundOrders`` that their gateway named go to their market in one
    command-stream message, each with its own answer subjects; one the trader named goes
    alone under its own message id. A new leader forwards again what is still in flight
    in the same messages, under the same ids: the market's stream drops them whole, and
    each order reaches its engine once."""
    caplog.set_level(logging.INFO, "tradeplane_engine.service.ledger")

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False, ledger_shards=1,
                                  assets=ASSETS) as exchange:
            js = exchange.nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)  # no engine applies anything yet
            await exchange.fund("alice", USDT=300 * USDT)
            nc = await nats.connect(exchange.url)
            answers = await answers_on(nc, INBOX)
            # 100 USDT each: the fourth is not covered. The third is the trader's own.
            orders = buys("g", 4, trader_named=2)
            stored = await js.publish(ledger_command_subject(0, LedgerSource.ORDER),
                                      encode_ledger_command(FundOrders(0, 0, orders=orders)))
            await eventually(lambda: len(answers) == 4, what="an answer to each order")
            assert HEADER_REFUSED in (answers[f"{INBOX}.ack.3"].headers or {})
            acks = [decode_pub_ack(answers[f"{INBOX}.ack.{number}"].data) for number in range(3)]
            assert acks[0] == acks[1]  # one message, one acknowledgement
            assert acks[2].seq != acks[0].seq
            together = await js.get_msg("tp-cmd-sol-usdt", acks[0].seq)
            assert together.headers == {
                HEADER_MESSAGE_ID: together_message_id(0, stored.seq, "sol-usdt", 0),
                HEADER_FUNDED: f"0:{stored.seq}", HEADER_COMMANDS: "2"}
            entries = decode_commands(together.data or b"")
            assert [msgspec.json.decode(entry.command)["client_order_id"] for entry in entries
                    ] == ["g0", "g1"]
            assert [entry.reply for entry in entries] == [f"{INBOX}.result.{number}"
                                                           for number in range(2)]
            alone = await js.get_msg("tp-cmd-sol-usdt", acks[2].seq)
            assert (alone.headers or {})[HEADER_MESSAGE_ID] == "alice:g2"

            # The leader stops before any order is settled; the next forwards them again.
            task = exchange.tasks[-1]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            ledger_nc = exchange.connections[-1]
            again = LedgerService(ledger_nc, 0, 1, SETTINGS)
            exchange.tasks.append(asyncio.create_task(again.run(
                await ledger_nc.jetstream().key_value(MARKETS_BUCKET))))
            await eventually(lambda: "forwarding 3 funded commands in flight again"
                             in caplog.text, 20, "the next leader forwarding them again")
            await exchange.start_engine(SOL)
            await eventually(lambda: not again.ledger.in_flight(), 20,
                             "every order settled as its market took it")
            engine = exchange.services["sol-usdt"].engine
            assert [order.account for order in engine.l3().bids] == ["alice"] * 3
            assert (await js.stream_info("tp-cmd-sol-usdt")).state.messages == 2
            assert again.ledger.balance("alice", "USDT") == (0, 300 * USDT)
            assert again.ledger.audit() == []
            await nc.close()

    run(scenario())


def test_an_order_whose_forward_is_acknowledged_as_a_duplicate_still_gets_its_result(
        tmp_path: Path) -> None:
    """A shard that sends a forward again (its first acknowledgement late) gets
    ``duplicate`` from the market's stream, and relays it. For an order its gateway
    named, that is the order itself, stored by the first send: it is acknowledged, and
    its result still comes. Before, the trader was told ``duplicate`` and no more."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1, assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice:
            # The shard stops: the test forwards as it would, and relays a duplicate.
            task = exchange.tasks[-1]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            funding: asyncio.Queue[Msg] = asyncio.Queue()

            async def funded(msg: Msg) -> None:
                await funding.put(msg)

            await exchange.nc.subscribe(ledger_command_subject(0, LedgerSource.ORDER),
                                        cb=funded)
            placing = asyncio.create_task(alice.place("sol-usdt", "buy", "1", "95"))
            message = await asyncio.wait_for(funding.get(), 10)
            command = decode_ledger_command(message.data, 1, 0)
            assert isinstance(command, FundOrders)
            [order] = command.orders
            assert order.named_by_gateway
            js = exchange.nc.jetstream()
            stored = await js.publish(command_subject("sol-usdt"), encode_command(order.place),
                                      headers={HEADER_REPLY: order.reply})
            await exchange.nc.publish(order.ack, msgspec.json.encode(
                {"stream": stored.stream, "seq": stored.seq, "duplicate": True}))
            reply = await asyncio.wait_for(placing, 15)
            assert reply.ok
            assert not reply.duplicate
            assert reply.sequence == stored.seq
            assert reply.order is not None
            assert (reply.order.client_order_id, reply.order.status) == (
                order.place.client_order_id, "new")

    run(scenario())


def test_a_forward_its_market_already_holds_from_the_same_funding_is_no_retry(
        tmp_path: Path) -> None:
    """The market's stream answers ``duplicate`` to a forward it already holds from the
    same funding (a copy sent before, whose acknowledgement was late): the leader relays
    it as the order's own acknowledgement, not a retry's, and the hold stays. Before,
    the trader's first and only attempt was answered as a duplicate."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False, ledger_shards=1,
                                  assets=ASSETS) as exchange:
            js = exchange.nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            await exchange.fund("alice", USDT=100 * USDT)
            shard = exchange.ledgers[0]
            await eventually(lambda: "sol-usdt" in shard.ledger.terms, 10,
                             "the market defined to the ledger")
            nc = await nats.connect(exchange.url)
            answers = await answers_on(nc, INBOX)
            [order] = buys("t", 1)
            funding = (await js.stream_info(ledger_command_stream(0))).state.last_seq + 1
            # What an earlier send of this very funding left in the market's stream.
            await js.publish(command_subject("sol-usdt"), encode_command(order.place),
                             headers={HEADER_MESSAGE_ID: "alice:t0",
                                      HEADER_FUNDED: f"0:{funding}"})
            stored = await js.publish(ledger_command_subject(0, LedgerSource.ORDER),
                                      encode_ledger_command(FundOrders(0, 0, orders=[order])))
            assert stored.seq == funding
            await eventually(lambda: len(answers) == 1, what="the order's acknowledgement")
            ack = decode_pub_ack(answers[f"{INBOX}.ack.0"].data)
            assert (ack.stream, ack.seq, ack.duplicate, ack.error) == (
                "tp-cmd-sol-usdt", 1, False, None)
            assert shard.ledger.balance("alice", "USDT") == (0, 100 * USDT)
            assert (await js.stream_info("tp-cmd-sol-usdt")).state.messages == 1
            await nc.close()

    run(scenario())
