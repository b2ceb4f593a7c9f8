"""The recorder: a market's events stream into PostgreSQL, exactly once, in batches.

Each batch the feed hands over is written in one transaction with binary COPY (the
journal, order history, trades, rejections, new orders, and changes to older orders
through a temporary table and one UPDATE). The journal's primary key is
(market, sequence), so a batch written twice fails as a whole; the recorder then reads
where the database really is and continues from there. Its position is the database's
own: the highest events-stream sequence in the journal, read at start — so a recorder
killed at any point resumes without gaps or duplicates.

The engine publishes every command's events once, in command order, consecutive
commands' batches in one message, so the batches of an events message must be the
commands after the last recorded. A message whose are not (a copy of recorded
commands' events published again under a new stream sequence, one that goes backwards
or skips ahead) was not written by the market's leader; like a message that does not
decode, it is quarantined whole and stepped over, never a reason to stop recording.

If PostgreSQL goes away the batch is kept and written again once it is back; the feed
stops pulling while the batch waits, so memory stays bounded. The lag (events in the
stream, not yet in the database) is a Prometheus gauge and is answered on
``tp.recorder.<market>.status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Gauge

from tradeplane_engine.feed import SequencedCommand, StreamFeed
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.metrics import RecorderMetrics
from tradeplane_engine.store.rows import (
    HISTORY,
    JOURNAL,
    ORDER_CHANGES,
    ORDERS,
    QUARANTINE,
    REJECTIONS,
    TRADES,
    Rows,
)
from tradeplane_engine.wire import (
    EventBatch,
    MarketDefinition,
    batch_parts,
    decode_events,
    event_stream,
    event_subject,
    is_traceparent,
    recorder_subject,
)
from tradeplane_shared import telemetry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

RECORDER_LAG = Gauge("tradeplane_recorder_lag_events",
                     "Events messages in the stream not yet written to PostgreSQL",
                     ["market"])
RECORDED = Gauge("tradeplane_recorder_position",
                 "The last events-stream sequence written to PostgreSQL", ["market"])



class Resync(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The database already holds part of a batch: continue from where it really is."""


async def record(connection: asyncpg.Connection, rows: Rows) -> None:
    """Write one batch's rows in one transaction."""
    async with connection.transaction():
        await connection.copy_records_to_table("journal", records=rows.journal,
                                               columns=JOURNAL)
        if rows.new_orders:
            await connection.copy_records_to_table("orders", records=rows.order_rows(),
                                                   columns=ORDERS)
        if rows.changes:
            await connection.copy_records_to_table("order_changes",
                                                   records=rows.change_rows(),
                                                   columns=ORDER_CHANGES)
            await connection.execute(
                "UPDATE orders o SET status = coalesce(c.status, o.status),"
                " filled = coalesce(c.filled, o.filled),"
                " remaining = coalesce(c.remaining, o.remaining),"
                " price = coalesce(c.price, o.price),"
                " quantity = coalesce(c.quantity, o.quantity),"
                " reason = coalesce(c.reason, o.reason),"
                " updated_sequence = c.updated_sequence"
                " FROM order_changes c"
                " WHERE o.market = c.market AND o.order_id = c.order_id")
        for table, records, columns in (("order_history", rows.history, HISTORY),
                                        ("trades", rows.trades, TRADES),
                                        ("rejections", rows.rejections, REJECTIONS),
                                        ("quarantine", rows.quarantined, QUARANTINE)):
            if records:
                await connection.copy_records_to_table(table, records=records,
                                                       columns=columns)


async def recorded_position(connection: asyncpg.Connection,
                            market: str) -> tuple[int, tuple[int, int]]:
    """The last events-stream message recorded (journaled, or quarantined), and the last
    command journaled: (sequence, index)."""
    row = await connection.fetchrow(
        "SELECT greatest((SELECT max(stream_sequence) FROM journal WHERE market = $1),"
        " (SELECT max(stream_sequence) FROM quarantine WHERE market = $1)) AS position",
        market)
    last = await connection.fetchrow(
        "SELECT sequence, index FROM journal WHERE market = $1"
        " ORDER BY sequence DESC, index DESC LIMIT 1", market)
    return int(row["position"] or 0), ((last["sequence"], last["index"]) if last else (0, 0))


class Recorder:
    """Records one market until cancelled."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, definition: MarketDefinition, *,
                 batch: int = 2048) -> None:
        self.nc = nc
        self.pool = pool
        self.definition = definition
        self.market = definition.name
        self.batch = batch
        self.position = 0
        """The last events-stream sequence written to PostgreSQL."""
        self.command_sequence = 0
        self.command_index = 0
        """The last command journaled, its sequence and index: the next events message
        must carry the one after it."""
        self.stream_end = 0
        self.metrics = RecorderMetrics(self.market)

    async def run(self) -> None:
        await self._define_market()
        status = await self.nc.subscribe(recorder_subject(self.market, "status"),
                                         cb=self._on_status)
        lag = asyncio.create_task(self._follow_lag())
        try:
            while True:
                self.position, (self.command_sequence, self.command_index) = (
                    await self._with_database(
                        lambda connection: recorded_position(connection, self.market)))
                RECORDED.labels(self.market).set(self.position)
                log.info("recorder %s: resuming after events message %d", self.market,
                         self.position)
                try:
                    await self._consume()
                except Resync:
                    log.warning("recorder %s: part of a batch was already recorded; "
                                "continuing from the database's position", self.market)
                except Exception:  # a recorder heals itself: start again from the database
                    log.exception("recorder %s failed; starting again in 1 s", self.market)
                    await asyncio.sleep(1.0)
        finally:
            lag.cancel()
            await status.unsubscribe()

    async def _consume(self) -> None:
        feed = StreamFeed(self.nc, event_stream(self.market), self.position + 1,
                           batch=self.batch, max_buffered=4 * self.batch)
        await feed.start()
        try:
            while True:
                messages = await feed.next_batch()
                started = time.time_ns() if telemetry.enabled else 0
                rows = self.rows(messages)
                await self._with_database(
                    lambda connection, rows=rows: self._write(connection, rows))
                if telemetry.enabled:
                    self._trace(started, rows.traces)
                self.position = messages[-1].sequence
                if rows.journal:
                    self.command_sequence, self.command_index = rows.journal[-1][1:3]
                RECORDED.labels(self.market).set(self.position)
                RECORDER_LAG.labels(self.market).set(max(0, self.stream_end - self.position))
        finally:
            await feed.stop()

    def _trace(self, started: int, traces: list[tuple[str, int]]) -> None:
        """The recorded events of sampled orders, in the orders' traces."""
        subject = event_subject(self.market)
        telemetry.consumer_spans(f"process {subject}", started, [
            (trace, telemetry.messaging(
                "process", subject, **{"tradeplane.market": self.market,
                                       "tradeplane.events_sequence": sequence,
                                       "db.system.name": "postgresql"}))
            for trace, sequence in traces])

    def rows(self, messages: list[SequencedCommand]) -> Rows:
        """The batch's rows; what is not the market's next command's events is quarantined."""
        rows = Rows()
        last = (self.command_sequence, self.command_index)
        for message in messages:
            try:
                batches = self._checked(message.data, last)
            except (msgspec.DecodeError, ValueError) as exc:  # UnicodeDecodeError included
                # Only an engine writes here, its commands in order: someone else did (or
                # a defect). Kept aside whole, stepped over; never a reason to stop
                # recording the market.
                log.warning("recorder %s: events message %d refused (%s); quarantined",
                            self.market, message.sequence, exc)
                UNTRUSTED_SKIPPED.labels("recorder", "events message").inc()
                rows.quarantined.append((self.market, message.sequence, message.data,
                                         str(exc)[:500]))
                continue
            for batch, payload in batches:
                rows.add(message.sequence, batch, payload)
                if batch.trace and is_traceparent(batch.trace):  # else not traced
                    rows.traces.append((batch.trace, batch.sequence))
            last = (batches[-1][0].sequence, batches[-1][0].index)
        return rows

    def _checked(self, data: bytes, last: tuple[int, int]) -> list[tuple[EventBatch, str]]:
        """Each command's batch in an events message, with its JSON, if they are the
        market's next commands'; else ``ValueError`` (``msgspec.DecodeError`` is one).

        ``last`` is the last command recorded, (sequence, index). The next is the
        command after it in its message, or the first of the next sequence; an events
        message holds its command messages whole, so it starts with a first."""
        batches: list[tuple[EventBatch, str]] = []
        sequence, index = last
        for part in batch_parts(data):
            batch = decode_events(part)
            if batch.market != self.market:
                raise ValueError(f"events of market {batch.market[:80]!r}")
            at = (batch.sequence, batch.index)
            if at <= (sequence, index):
                raise ValueError(f"duplicate command {_named(at)} (recorded through "
                                 f"{_named((sequence, index))})")
            following = batches and at == (sequence, index + 1)
            if not following and at != (sequence + 1, 0):
                raise ValueError(f"command {_named(at)} is not the one after "
                                 f"{_named((sequence, index))}")
            batches.append((batch, part.decode()))
            sequence, index = at
        if not batches:
            raise ValueError("no command's events")
        return batches

    async def _write(self, connection: asyncpg.Connection, rows: Rows) -> None:
        began = time.perf_counter()
        try:
            await record(connection, rows)
        except asyncpg.UniqueViolationError as exc:
            raise Resync from exc
        self.metrics.written(rows, time.perf_counter() - began)

    async def _with_database(self, work: Any) -> Any:
        return await with_connection(self.pool, work, f"recorder {self.market}")

    async def _define_market(self) -> None:
        spec = self.definition

        async def upsert(connection: asyncpg.Connection) -> None:
            await connection.execute(
                "INSERT INTO markets (market, base, quote, tick_size, lot_size)"
                " VALUES ($1, $2, $3, $4::numeric, $5::numeric)"
                " ON CONFLICT (market) DO UPDATE SET base = excluded.base,"
                " quote = excluded.quote, tick_size = excluded.tick_size,"
                " lot_size = excluded.lot_size, updated_at = now()",
                self.market, spec.base, spec.quote, spec.tick_size, spec.lot_size)

        await self._with_database(upsert)

    async def _follow_lag(self) -> None:
        js = self.nc.jetstream()
        while True:
            try:
                info = await js.stream_info(event_stream(self.market))
                self.stream_end = info.state.last_seq
                RECORDER_LAG.labels(self.market).set(max(0, self.stream_end - self.position))
            except Exception as exc:
                log.debug("recorder %s: no stream info: %s", self.market, exc)
            await asyncio.sleep(1.0)

    async def _on_status(self, msg: Msg) -> None:
        if not msg.reply:
            return  # nobody to answer
        await msg.respond(msgspec.json.encode({
            "market": self.market, "recorded": self.position, "streamEnd": self.stream_end,
            "lag": max(0, self.stream_end - self.position),
        }))


def _named(at: tuple[int, int]) -> str:
    """A command as a log line names it: its sequence, and its index when it has one."""
    sequence, index = at
    return f"sequence {sequence}" if not index else f"sequence {sequence} index {index}"
