"""Command-stream messages of several commands (docs/protocol.md, the command stream).

What a gateway reads together for one market, other than an order under the trader's
own clientOrderId, goes to the market's stream in one message. The commands share the
message's sequence, each with its index among them, and every replica, the recorder and
the ledger take them in that order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from tests.support.exchange import SOL, eventually, local_exchange, run, stream_commands
from tradeplane_engine.core import Cancel, Engine, Place, Side
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.service.replica import Outgoing, grouped_messages
from tradeplane_engine.wire import (
    HEADER_COMMANDS,
    decode_commands,
    decode_event_message,
    encode_command,
    encode_commands,
)
from tradeplane_gateway import connect


def skipped(what: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
        "component": "engine", "what": what}) or 0.0


async def stored(js: JetStreamContext, stream: str) -> list[tuple[int, bytes, dict[str, str]]]:
    """Every message of a stream: (sequence, data, headers)."""
    info = await js.stream_info(stream)
    out = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(stream, sequence)
        out.append((sequence, message.data or b"", dict(message.headers or {})))
    return out


def test_commands_read_together_share_one_message_and_each_has_its_own_result(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            # Many requests at once, as a loaded gateway reads them.
            places = [client.place("sol-usdt", side, "1", str(price))
                      for client, side, price in [(alice, "sell", 101), (bob, "buy", 99)] * 20]
            placed = await asyncio.gather(*places)
            assert all(reply.order is not None for reply in placed)
            named = await alice.place("sol-usdt", "buy", "1", "98", client_order_id="mine-1")
            cancels = await asyncio.gather(*[
                client.cancel("sol-usdt", reply.order.order_id)
                for client, reply in zip([alice, bob] * 20, placed, strict=True)
                if reply.order is not None])
            assert all(reply.order is not None and reply.order.status == "canceled"
                       for reply in cancels)

            js = exchange.nc.jetstream()
            messages = await stored(js, "tp-cmd-sol-usdt")
            together = [headers for _, _, headers in messages if HEADER_COMMANDS in headers]
            assert together, "no message held several commands"
            assert len(messages) < 81
            # The order under the trader's own id went alone, under its message id.
            alone = [(sequence, headers) for sequence, _, headers in messages
                     if headers.get("Nats-Msg-Id") == "alice:mine-1"]
            assert [sequence for sequence, _ in alone] == [named.sequence]
            # Each command's reply says its message's sequence; the commands of one
            # message share it.
            sequences = {reply.sequence for reply in placed}
            assert len(sequences) < len(placed)

            # The events stream holds each command's events once, in (sequence, index)
            # order, with no command missing.
            applied: list[tuple[int, int]] = []
            for _, data, _ in await stored(js, "tp-evt-sol-usdt"):
                applied.extend((batch.sequence, batch.index)
                               for batch in decode_event_message(data))
            expected = [(sequence, index) for sequence, data, headers in messages
                        for index in range(int(headers.get(HEADER_COMMANDS, "1")))]
            assert applied == expected

            # A replica applying the stream, message by message, reaches the same state.
            replay = Engine(SOL.spec())
            for command in await stream_commands(js, "sol-usdt"):
                replay.apply(command)
            assert replay.state_hash() == exchange.services["sol-usdt"].engine.state_hash()

    run(scenario())


def test_a_message_of_commands_is_checked_entry_by_entry_and_never_stops_the_market(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            js = exchange.nc.jetstream()
            inbox = exchange.nc.new_inbox()
            answers = await exchange.nc.subscribe(f"{inbox}.>")
            place = encode_command(Place(0, 0, "alice", Side.SELL, 1, 10100))
            refused_replies = skipped("reply subject")
            refused_traces = skipped("trace header")
            refused_commands = skipped("command")
            refused_messages = skipped("commands message")
            payload = encode_commands([
                (place, f"{inbox}.a", ""),  # not a gateway's inbox: applied, not answered
                (b'{"type": "place"}', "", ""),  # not a command: skipped
                (encode_command(Cancel(0, 0, "alice", 1)), "", "not a traceparent"),
            ])
            ack = await js.publish("tp.cmd.sol-usdt", payload, headers={HEADER_COMMANDS: "3"})
            await js.publish("tp.cmd.sol-usdt", b"[1, 2]", headers={HEADER_COMMANDS: "2"})
            placed = await alice.place("sol-usdt", "buy", "1", "99")
            assert placed.sequence == ack.seq + 2
            assert placed.order is not None

            events = decode_event_message((await js.get_msg("tp-evt-sol-usdt", 1)).data or b"")
            assert [(batch.sequence, batch.index) for batch in events[:3]] == [
                (ack.seq, 0), (ack.seq, 1), (ack.seq, 2)]
            assert [type(event).__name__ for event in events[0].events] == [
                "OrderAccepted", "BookLevel"]
            assert events[1].events == []
            assert [type(event).__name__ for event in events[2].events][:1] == ["OrderUpdate"]
            assert skipped("reply subject") == refused_replies + 1
            assert skipped("trace header") == refused_traces + 1
            assert skipped("command") == refused_commands + 2  # the entry, and [1, 2]
            assert skipped("commands message") == refused_messages + 1
            # Anything the engine sent that inbox went out before the later order's result;
            # a round trip to the server since then has it delivered, if there was any.
            await exchange.nc.flush()
            assert answers.pending_msgs == 0

    run(scenario())


def test_the_commands_of_a_message_are_settled_whole(tmp_path: Path) -> None:
    """Balances on: cancels a gateway sequenced together release what their orders held,
    each once: the ledger settles a message's commands as one report."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, ledger_shards=1,
                                  assets={"SOL": 4, "USDT": 6}) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await exchange.fund("alice", USDT=1_000 * 10**6)
            ledger = exchange.ledgers[0].ledger
            placed = [await alice.place("sol-usdt", "buy", "1", str(90 + n))
                      for n in range(6)]
            assert ledger.balance("alice", "USDT")[1] > 0
            cancels = await asyncio.gather(*[alice.cancel("sol-usdt", reply.order.order_id)
                                             for reply in placed if reply.order is not None])
            assert len({reply.sequence for reply in cancels}) < len(cancels)
            await eventually(lambda: ledger.balance("alice", "USDT") == (1_000 * 10**6, 0),
                             what="every hold released")
            assert ledger.audit() == []

    run(scenario())


def test_a_many_commands_message_payload_round_trips() -> None:
    entries = [(encode_command(Cancel(0, 0, "a", n)), f"_GW.x.g.{n}", "") for n in range(3)]
    decoded = decode_commands(encode_commands(entries))
    assert [(bytes(entry.command), entry.reply, entry.trace) for entry in decoded] == entries
    for bad in (b"{}", b"[]", b"[[{}, 1]]", msgspec.json.encode([[{}, "", ""]] * 1025)):
        try:
            decode_commands(bad)
        except msgspec.DecodeError:
            continue
        raise AssertionError(f"{bad[:20]!r} decoded")


def test_an_events_message_never_splits_the_commands_of_one_message() -> None:
    """At the size limit, events messages break between command messages only: their
    message id is their last sequence, and a sequence is settled and replayed whole."""
    outgoing: Outgoing = [(SequencedCommand(sequence, 0, b"", None, index=index), b"x" * 10, [])
                for sequence, index in ((1, 0), (2, 0), (2, 1), (2, 2), (3, 0))]
    messages = grouped_messages(outgoing, limit=15)  # room for one batch a message
    assert [(last, payload.count(b"x" * 10)) for last, payload in messages] == [
        (1, 1), (2, 3), (3, 1)]
