"""The recorder and the snapshotter against real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane_engine.core import (
    AnyEvent,
    CancelReason,
    Engine,
    OrderAccepted,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Place,
    RejectCode,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.store.database import open_database, redact
from tradeplane_engine.store.queries import History, OrderQuery, TradesQuery
from tradeplane_engine.store.recorder import Recorder
from tradeplane_engine.store.snapshots import Snapshotter, latest_snapshot
from tradeplane_engine.streams import ensure_market_streams
from tradeplane_engine.wire import (
    HEADER_COMMANDS,
    EventBatch,
    decode_command,
    encode_command,
    encode_commands,
    encode_events,
    event_subject,
    join_batches,
)
from tradeplane_gateway import RequestError, connect


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("postgresql://postgres@127.0.0.1:5/x") == "postgresql://postgres@127.0.0.1:5/x"


def test_recorder_writes_every_event_once_and_history_answers(tmp_path: Path,
                                                             database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            recorder = Recorder(exchange.nc, pool, SOL, batch=16)
            task = asyncio.create_task(recorder.run())
            try:
                await alice.place("sol-usdt", "sell", "2", "100", client_order_id="a1")
                await bob.place("sol-usdt", "buy", "0.5", "101", client_order_id="b1")
                await alice.replace("sol-usdt", client_order_id="a1", quantity="1.5")
                with contextlib.suppress(RequestError):
                    await bob.place("sol-usdt", "buy", "1", "150", client_order_id="far")
                for n in range(40):
                    await bob.place("sol-usdt", "buy", "0.1", str(90 + n % 5),
                                    client_order_id=f"b-{n}", response="ack")
                await alice.place("sol-usdt", "sell", "3", "90", client_order_id="sweep")
                # A decrement takes 0.5 from "dec" (and all of "own"); "dec" rests with 0.5.
                await alice.place("sol-usdt", "sell", "0.5", "95", client_order_id="own")
                dec = await alice.place("sol-usdt", "buy", "1", "95", stp="decrement",
                                        client_order_id="dec")
                assert dec.order is not None
                assert (dec.order.status, dec.order.remaining_quantity) == ("new", "0.5")
                # Through the 47th command: the engine may have put several commands'
                # events in one message (one per applied batch), so the stream holds 47
                # or fewer messages.
                await eventually(lambda: recorder.command_sequence == 47, timeout=15,
                                 what="the recorder catching up")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with pool.acquire() as connection:
                journal = [row["sequence"] for row in await connection.fetch(
                    "SELECT sequence FROM journal ORDER BY sequence")]
                assert journal == list(range(1, 48))
                engine = exchange.services["sol-usdt"].engine
                trades = await connection.fetchval("SELECT count(*) FROM trades")
                assert trades == engine.next_trade_id - 1
                a1 = await connection.fetchrow(
                    "SELECT * FROM orders_decimal WHERE client_order_id = 'a1'")
                assert (a1["status"], str(a1["filled"]), str(a1["remaining"])) == (
                    "partiallyFilled", "0.50", "1.00")
                dec_row = await connection.fetchrow(
                    "SELECT * FROM orders_decimal WHERE client_order_id = 'dec'")
                assert (dec_row["status"], str(dec_row["filled"]), str(dec_row["remaining"]),
                        dec_row["reason"]) == ("new", "0.00", "0.50", None)
                dec_history = [(row["status"], row["remaining"]) for row in await connection.fetch(
                    "SELECT h.status, h.remaining FROM order_history h JOIN orders o"
                    " USING (market, order_id) WHERE o.client_order_id = 'dec'"
                    " ORDER BY h.sequence, h.position")]
                assert dec_history == [("new", 100), ("reduced", 50)]
                open_in_book = {order.order_id for side in (engine.l3().bids, engine.l3().asks)
                                for order in side}
                open_in_database = {row["order_id"] for row in await connection.fetch(
                    "SELECT order_id FROM orders WHERE status IN ('new', 'partiallyFilled')")}
                assert open_in_database == open_in_book
            history = History(exchange.nc, pool, SOL)
            far = await history.order(OrderQuery("bob", client_order_id="far"))
            assert far is not None
            assert (far["status"], far["code"]) == ("rejected", 206)
            b1 = await history.order(OrderQuery("bob", client_order_id="b1"))
            assert b1 is not None
            assert (b1["status"], b1["filledQuantity"]) == ("filled", "0.5")
            first_page = await history.trades(TradesQuery("alice", limit=2))
            second_page = await history.trades(TradesQuery("alice", before=first_page["next"],
                                                           limit=100))
            ids = [t["tradeId"] for t in first_page["trades"] + second_page["trades"]]
            assert ids == sorted(ids, reverse=True)
            assert len(ids) == trades
            assert all(t["role"] in ("maker", "taker") for t in first_page["trades"])
        await pool.close()

    run(scenario())


def test_snapshotter_snapshots_on_schedule_and_an_engine_restarts_from_it(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        every = type(SOL)(**{**{f: getattr(SOL, f) for f in SOL.__struct_fields__},
                             "snapshot_every": 10})
        async with local_exchange(tmp_path, every) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice:
            snapshotter = Snapshotter(exchange.nc, pool, every)
            task = asyncio.create_task(snapshotter.run())
            try:
                for n in range(35):
                    await alice.place("sol-usdt", "buy" if n % 2 else "sell", "0.1",
                                      str(99 + n % 3))
                await eventually(lambda: snapshotter.position == 35, timeout=15)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with pool.acquire() as connection:
                sequences = [row["sequence"] for row in await connection.fetch(
                    "SELECT sequence FROM snapshots ORDER BY sequence")]
                assert sequences == [10, 20, 30]
                snapshot = await latest_snapshot(connection, "sol-usdt")
            assert snapshot is not None
            replay = Engine(every.spec())
            js = exchange.nc.jetstream()
            for sequence in range(1, 31):
                message = await js.get_msg("tp-cmd-sol-usdt", sequence)
                assert message.data is not None
                replay.apply(decode_command(message.data, sequence, 0))
            assert snapshot.state_hash == replay.state_hash()

            serving = exchange.services["sol-usdt"]
            hash_before = serving.engine.state_hash()
            await exchange.stop_engine("sol-usdt")
            restarted = exchange.start_engine_with(every, pool=pool)
            service = await restarted
            assert service.engine.state_hash() == hash_before
            assert service.replayed == 5  # commands 31..35, not all 35
        await pool.close()

    run(scenario())


def test_gateway_answers_from_postgres_what_the_engine_no_longer_holds(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            recorder = Recorder(exchange.nc, pool, SOL)
            history = History(exchange.nc, pool, SOL)
            await history.start()
            task = asyncio.create_task(recorder.run())
            try:
                await alice.place("sol-usdt", "sell", "1", "100", client_order_id="gone")
                await bob.place("sol-usdt", "buy", "1", "100")
                await alice.place("sol-usdt", "sell", "2", "101", client_order_id="resting")
                with contextlib.suppress(RequestError):
                    await alice.place("sol-usdt", "sell", "1", "200", client_order_id="banded")
                await eventually(lambda: recorder.command_sequence == 4, timeout=15)
                service = exchange.services["sol-usdt"]
                service.memory.forget()  # as after a restart from a snapshot

                gone = await alice.status("sol-usdt", client_order_id="gone")
                assert gone.order is not None
                assert (gone.order.status, gone.order.filled_quantity) == ("filled", "1")
                banded = await alice.status("sol-usdt", client_order_id="banded")
                assert banded.order is not None
                assert (banded.order.status, banded.order.code) == ("rejected", 206)
                with pytest.raises(RequestError) as unknown:
                    await alice.status("sol-usdt", client_order_id="never-sent")
                assert unknown.value.code == 301

                open_orders = await alice.open_orders("sol-usdt")
                assert [order.client_order_id for order in open_orders.orders or []] == [
                    "resting"]
                trades = await bob.trade_history("sol-usdt")
                assert [(t["role"], t["side"], t["price"]) for t in trades.trades or []] == [
                    ("taker", "buy", "100")]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await history.stop()
            with pytest.raises(RequestError) as no_history:
                await bob.trade_history("sol-usdt")
            assert no_history.value.code == 912
        await pool.close()

    run(scenario())


def test_history_reads_rejections_stored_before_they_named_their_command(
        tmp_path: Path, database: str) -> None:
    """Events an older engine published do not say which command a rejection refused: a
    code only a cancel or a replace gets is not taken for an order's state."""
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            js = exchange.nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            accepted = OrderAccepted(1, "alice", "old", Side.SELL, OrderType.LIMIT, 10500,
                                     100, 0, TimeInForce.GTC, False,
                                     SelfTradePrevention.EXPIRE_MAKER)
            canceled = OrderUpdate(1, "alice", "old", OrderStatus.CANCELED, 0, 0,
                                   CancelReason.USER)
            batches: list[list[AnyEvent]] = [
                [accepted], [canceled],
                [OrderRejected("alice", "old", 0, RejectCode.UNKNOWN_ORDER,
                               "no such open order")],
                [OrderRejected("alice", "banded", 0, RejectCode.OUTSIDE_PRICE_BAND,
                               "price outside the band")]]
            for sequence, events in enumerate(batches, start=1):
                message = msgspec.json.decode(encode_events(
                    EventBatch("sol-usdt", sequence, sequence, events)))
                for event in message["events"]:
                    event.pop("command", None)  # as published before it was recorded
                await js.publish(event_subject("sol-usdt"), msgspec.json.encode(message))
            recorder = Recorder(exchange.nc, pool, SOL)
            task = asyncio.create_task(recorder.run())
            try:
                await eventually(lambda: recorder.position == 4, timeout=15)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            history = History(exchange.nc, pool, SOL)
            old = await history.order(OrderQuery("alice", client_order_id="old"))
            assert old is not None
            assert (old["orderId"], old["status"]) == (1, "canceled")
            banded = await history.order(OrderQuery("alice", client_order_id="banded"))
            assert banded is not None
            assert (banded["orderId"], banded["status"], banded["code"]) == (0, "rejected", 206)
        await pool.close()

    run(scenario())


@pytest.mark.parametrize("payload", [
    b"\xff\x00 not json",
    b'{"market":"sol-usdt","sequence":2}',
    b'{"market":"other-usdt","sequence":2,"timestamp":2,"events":[]}',
    encode_events(EventBatch("sol-usdt", 1, 1, [])),
    encode_events(EventBatch("sol-usdt", 7, 2, [])),
    join_batches([encode_events(EventBatch("sol-usdt", 1, 1, [])),
                  encode_events(EventBatch("sol-usdt", 2, 2, []))]),
    join_batches([encode_events(EventBatch("sol-usdt", 2, 2, [])),
                  encode_events(EventBatch("sol-usdt", 4, 2, []))]),
    join_batches([encode_events(EventBatch("sol-usdt", 2, 2, [])), b"{}"]),
    b"[]",
], ids=["not JSON", "not an events message", "another market's events",
        "a recorded command's events again", "a command sequence that skips ahead",
        "grouped with a recorded command's", "grouped with a gap", "grouped with garbage",
        "an empty group"])
def test_an_unreadable_events_message_is_quarantined_and_recording_goes_on(
        tmp_path: Path, database: str, payload: bytes) -> None:
    """Only an engine writes a market's events stream, its commands in order (several
    to a message); whatever else is found there (a copy of a recorded command's events under a
    new stream sequence made the recorder retry one batch for ever) is kept aside in the
    quarantine table and stepped over, also after a restart."""
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            js = exchange.nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            accepted = OrderAccepted(1, "alice", "a", Side.SELL, OrderType.LIMIT, 10500,
                                     100, 0, TimeInForce.GTC, False,
                                     SelfTradePrevention.EXPIRE_MAKER)
            await js.publish(event_subject("sol-usdt"),
                             encode_events(EventBatch("sol-usdt", 1, 1, [accepted])))
            await js.publish(event_subject("sol-usdt"), payload)
            await js.publish(event_subject("sol-usdt"), join_batches(
                [encode_events(EventBatch("sol-usdt", 2, 3, [])),
                 encode_events(EventBatch("sol-usdt", 3, 4, []))]))

            async def recorded_through(position: int) -> None:
                recorder = Recorder(exchange.nc, pool, SOL)
                task = asyncio.create_task(recorder.run())
                try:
                    await eventually(lambda: recorder.position == position, timeout=15,
                                     what="the recorder past the bad message")
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

            await recorded_through(3)
            await recorded_through(3)  # again, from the database's position
            async with pool.acquire() as connection:
                journal = [row["stream_sequence"] for row in await connection.fetch(
                    "SELECT stream_sequence FROM journal WHERE market = 'sol-usdt'"
                    " ORDER BY stream_sequence")]
                quarantined = await connection.fetch(
                    "SELECT stream_sequence, payload FROM quarantine WHERE market = 'sol-usdt'")
            assert journal == [1, 3, 3]  # the last message holds two commands' events
            assert [(row["stream_sequence"], bytes(row["payload"]))
                    for row in quarantined] == [(2, payload)]
        await pool.close()

    run(scenario())


def test_a_grouped_message_is_recorded_command_by_command_and_only_real_traces_kept(
) -> None:
    """Each command's batch of a grouped message becomes its journal row, its own JSON;
    a ``trace`` that is not a W3C traceparent is recorded with the events but traced
    nowhere."""
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parts = [encode_events(EventBatch("sol-usdt", 1, 10, [], traced)),
             encode_events(EventBatch("sol-usdt", 2, 20, [], "x" * 500))]
    recorder = Recorder(None, None, SOL)  # type: ignore[arg-type]  # rows only: no I/O
    rows = recorder.rows([SequencedCommand(7, 0, join_batches(parts), None)])
    assert [(row[1], row[2], row[3], row[5]) for row in rows.journal] == [
        (1, 0, 7, parts[0].decode()), (2, 0, 7, parts[1].decode())]
    assert rows.traces == [(traced, 1)]
    assert rows.quarantined == []


def test_the_commands_of_one_message_are_journaled_each_and_only_whole() -> None:
    """A command-stream message of several commands: its commands share its sequence and
    are journaled by (sequence, index). An events message starts with the first command
    of the sequence after the last journaled, and never in the middle of one."""
    recorder = Recorder(None, None, SOL)  # type: ignore[arg-type]  # rows only: no I/O

    def message(position: int, *commands: tuple[int, int]) -> SequencedCommand:
        return SequencedCommand(position, 0, join_batches([
            encode_events(EventBatch("sol-usdt", sequence, 10, [], None, index))
            for sequence, index in commands]), None)

    recorder.command_sequence, recorder.command_index = 4, 0
    rows = recorder.rows([message(5, (5, 0), (5, 1), (5, 2)), message(6, (6, 0)),
                          message(7, (6, 1)),  # after its message, journaled whole
                          message(8, (7, 1)),  # the middle of a message
                          message(9, (7, 0), (7, 2)),  # a command skipped
                          message(10, (7, 0), (7, 1)),
                          message(11, (5, 1))])  # journaled already
    assert [(row[1], row[2], row[3]) for row in rows.journal] == [
        (5, 0, 5), (5, 1, 5), (5, 2, 5), (6, 0, 6), (7, 0, 10), (7, 1, 10)]
    assert [(row[1], row[3].split(" (")[0]) for row in rows.quarantined] == [
        (7, "command sequence 6 index 1 is not the one after sequence 6"),
        (8, "command sequence 7 index 1 is not the one after sequence 6"),
        (9, "command sequence 7 index 2 is not the one after sequence 7"),
        (11, "duplicate command sequence 5 index 1")]


def test_messages_of_several_commands_are_snapshotted_and_journaled_whole(
        tmp_path: Path, database: str) -> None:
    """The snapshotter stores a state only between messages (every 2 sequences here,
    each message several commands), the recorder journals every command by (sequence,
    index), and an engine restarted from the snapshot replays only what follows."""
    async def scenario() -> None:
        pool = await open_database(database)
        every = type(SOL)(**{**{f: getattr(SOL, f) for f in SOL.__struct_fields__},
                             "snapshot_every": 2})
        async with local_exchange(tmp_path, every) as exchange:
            snapshotter = Snapshotter(exchange.nc, pool, every)
            recorder = Recorder(exchange.nc, pool, every)
            tasks = [asyncio.create_task(snapshotter.run()),
                     asyncio.create_task(recorder.run())]
            js = exchange.nc.jetstream()
            sizes = (3, 2, 1, 4)
            try:
                placed = 0
                for size in sizes:
                    commands = []
                    for _ in range(size):
                        placed += 1
                        commands.append((encode_command(Place(
                            0, 0, "alice", Side.SELL if placed % 2 else Side.BUY, 10,
                            10_000 + (placed % 3) * (1 if placed % 2 else -1))), "", ""))
                    if size == 1:
                        await js.publish("tp.cmd.sol-usdt", commands[0][0])
                    else:
                        await js.publish("tp.cmd.sol-usdt", encode_commands(commands),
                                         headers={HEADER_COMMANDS: str(size)})
                await eventually(lambda: snapshotter.position == 4, timeout=15)
                await eventually(lambda: (recorder.command_sequence,
                                          recorder.command_index) == (4, 3), timeout=15)
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            async with pool.acquire() as connection:
                assert [row["sequence"] for row in await connection.fetch(
                    "SELECT sequence FROM snapshots ORDER BY sequence")] == [2, 4]
                snapshot = await latest_snapshot(connection, "sol-usdt")
                journal = [(row["sequence"], row["index"]) for row in await connection.fetch(
                    "SELECT sequence, index FROM journal ORDER BY sequence, index")]
            assert journal == [(sequence, index) for sequence, size in enumerate(sizes, 1)
                               for index in range(size)]
            serving = exchange.services["sol-usdt"]
            assert snapshot is not None
            assert snapshot.state_hash == serving.engine.state_hash()
            await exchange.stop_engine("sol-usdt")
            service = await exchange.start_engine_with(every, pool=pool)
            assert service.engine.state_hash() == snapshot.state_hash
            assert service.replayed == 0
        await pool.close()

    run(scenario())
