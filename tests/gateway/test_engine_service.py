"""The engine service over real JetStream: ordering, events, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.support.exchange import SOL, eventually, local_exchange, run, stream_commands
from tradeplane_engine.core import Engine
from tradeplane_engine.feed import FeedError, delivery
from tradeplane_engine.service import MarketService
from tradeplane_engine.streams import StreamSettings, ensure_market_streams
from tradeplane_engine.wire import decode_event_message
from tradeplane_gateway import connect


def test_a_delivery_is_read_from_both_ack_subject_forms() -> None:
    assert delivery("$JS.ACK.tp-cmd-x.c1.1.42.40.1700000000000000001.7") == (
        "c1", 42, 1700000000000000001)
    assert delivery(
        "$JS.ACK.hub.ACCOUNTHASH.tp-cmd-x.c1.1.42.40.1700000000000000001.7.token") == (
        "c1", 42, 1700000000000000001)


def test_every_command_has_one_events_message_and_a_restart_publishes_nothing_twice(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            for n in range(20):
                await alice.place("sol-usdt", "sell", "1", str(100 + n % 3))
                await bob.place("sol-usdt", "buy", "0.5", str(101 + n % 2))
            before = exchange.services["sol-usdt"]
            hash_before = before.engine.state_hash()
            book_before = before.market_data.book_sequence

            await exchange.stop_engine("sol-usdt")
            # Sequenced while the engine is down: applied once it is back.
            acked = await alice.place("sol-usdt", "sell", "1", "104", response="ack")
            after = await exchange.start_engine(SOL)
            await eventually(lambda: after.engine.last_sequence == acked.sequence)
            js = exchange.nc.jetstream()
            commands = (await js.stream_info("tp-cmd-sol-usdt")).state.messages
            events = (await js.stream_info("tp-evt-sol-usdt")).state.messages
            assert commands == events == 41

            # The restarted engine rebuilt the same state from the command stream alone.
            replay = Engine(SOL.spec())
            for command in await stream_commands(js, "sol-usdt", through=40):
                replay.apply(command)
            assert book_before == 40  # every command of the session changed the book
            assert after.market_data.book_sequence == 41  # the order sequenced while down
            assert replay.state_hash() == hash_before

            # Events messages hold every command's batch once, in command order; each
            # message's id and Tp-Sequence are its last command's.
            info = await js.stream_info("tp-evt-sol-usdt")
            sequences: list[int] = []
            for position in range(1, info.state.last_seq + 1):
                stored = await js.get_msg("tp-evt-sol-usdt", position)
                assert stored.data is not None
                assert stored.headers is not None
                batches = decode_event_message(stored.data)
                assert stored.headers["Nats-Msg-Id"] == f"sol-usdt:{batches[-1].sequence}"
                assert stored.headers["Tp-Sequence"] == str(batches[-1].sequence)
                sequences.extend(batch.sequence for batch in batches)
            assert sequences == list(range(1, 42))

    run(scenario())


def test_a_command_that_is_not_a_command_is_skipped_the_same_way_everywhere(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            js = exchange.nc.jetstream()
            await js.publish("tp.cmd.sol-usdt", b"not a command")
            await js.publish("tp.cmd.sol-usdt", msgspec.json.encode({"type": "place"}))
            placed = await alice.place("sol-usdt", "buy", "1", "99")
            assert placed.sequence == 3
            assert placed.order is not None
            empty = await js.get_msg("tp-evt-sol-usdt", 1)
            assert empty.data is not None
            assert decode_event_message(empty.data)[0].sequence == 1
            assert decode_event_message(empty.data)[0].events == []

    run(scenario())


def test_command_retention_below_three_snapshot_intervals_is_refused() -> None:
    StreamSettings(command_retention=300).check(snapshot_every=100)
    StreamSettings(command_retention=0).check(snapshot_every=100)  # keeps everything
    with pytest.raises(ValueError, match="below 300 commands"):
        StreamSettings(command_retention=299).check(snapshot_every=100)


def test_an_engine_refuses_a_stream_that_no_longer_reaches_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        short = type(SOL)(**{**{f: getattr(SOL, f) for f in SOL.__struct_fields__},
                             "snapshot_every": 10})
        async with local_exchange(tmp_path, short, engines=False) as exchange:
            js = exchange.nc.jetstream()
            settings = StreamSettings(memory=True, command_retention=30)
            await ensure_market_streams(js, short, settings)
            for _ in range(50):
                await js.publish("tp.cmd.sol-usdt", b"{}")
            service = MarketService(exchange.nc, short, settings)  # no database, no snapshot
            with pytest.raises(FeedError, match="starts at sequence 21, but the engine needs 1"):
                await asyncio.wait_for(service.run(), 10)

    run(scenario())
