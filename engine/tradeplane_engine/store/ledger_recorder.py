"""The ledger recorder: a ledger shard's events stream into PostgreSQL, exactly once.

Each events message of a ledger shard holds, for consecutive commands, what each did
(``wire.LedgerBatch``): the command's ``Movement``s and ``Fill``s, the lines of the
double-entry journal (a fill's legs, one by one). For each batch of messages the feed
hands over, one transaction writes every line as a ``ledger_journal`` row, adds them
to ``ledger_balances``, and moves ``ledger_positions`` on — but only from where this
recorder read it, so a batch is never recorded twice: by a second recorder, nor after a
commit whose acknowledgement was lost (the recorder then reads the position again and
continues from there, as the market recorder does on a duplicate key).

As with a market's events, only the shard's leader writes this stream, in command
order. A message that does not decode, is another shard's, or is not the next commands'
(a copy of recorded ones, or one that skips ahead) is quarantined in
``ledger_quarantine``, logged and counted, and stepped over — never a reason to stop.

PostgreSQL outages are waited out (``database.with_connection``) with the batch kept and
the feed no longer pulling; NATS outages are the ``StreamFeed``'s to survive. Any other
failure starts the recorder again from the database's position a second later.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client
from prometheus_client import Gauge

from tradeplane_engine.feed import SequencedCommand, StreamFeed
from tradeplane_engine.ledger import Fill, Movement, journal_lines
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.following import await_streams
from tradeplane_engine.store.recorder import Resync
from tradeplane_engine.wire import LedgerBatch, decode_ledger_events, ledger_event_stream
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

LEDGER_RECORDED = Gauge("tradeplane_ledger_recorder_position",
                        "The last ledger events-stream sequence written to PostgreSQL",
                        ["shard"])

JOURNAL_COLUMNS = ("shard", "sequence", "index", "stream_sequence", "kind", "account",
                   "asset", "available_delta", "held_delta", "market", "order_id",
                   "reference", "sequenced_at")
QUARANTINE_COLUMNS = ("shard", "stream_sequence", "payload", "reason")

MAX_UNITS = 10**40
"""Amounts at or beyond this do not fit ``numeric(40, 0)``: no ledger writes them."""
MAX_ORDER_ID = 2**63


@dataclass
class LedgerRows:
    """One batch's rows, and where the shard's recording stands after it."""

    stream_sequence: int
    sequence: int
    journal: list[tuple[object, ...]] = field(default_factory=list)
    quarantined: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    balances: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(account, asset) → [available change, held change, last command sequence]."""

    def add(self, shard: int, stream_sequence: int, batch: LedgerBatch) -> None:
        for index, event in enumerate(journal_lines(batch.events)):
            if not isinstance(event, Movement):
                continue
            self.journal.append((shard, batch.sequence, index, stream_sequence,
                                 str(event.kind), event.account, event.asset,
                                 event.available, event.held, event.market, event.order_id,
                                 event.reference, batch.timestamp))
            change = self.balances.setdefault((event.account, event.asset), [0, 0, 0])
            change[0] += event.available
            change[1] += event.held
            change[2] = batch.sequence
        self.sequence = batch.sequence


def checked(shard: int, last: int, data: bytes) -> list[LedgerBatch]:
    """The message's batches if they are this shard's next commands'; else ``ValueError``
    (``msgspec.DecodeError`` is one) saying why not."""
    batches = decode_ledger_events(data)
    if not batches:
        raise ValueError("no command's events")
    for batch in batches:
        if batch.shard != shard:
            raise ValueError(f"events of ledger shard {batch.shard}")
        if batch.sequence <= last:
            raise ValueError(f"duplicate command sequence {batch.sequence} "
                             f"(recorded through {last})")
        if batch.sequence != last + 1:
            raise ValueError(f"command sequence {batch.sequence} skips ahead of {last + 1}")
        last = batch.sequence
        for event in batch.events:
            if isinstance(event, Movement) and not (
                    abs(event.available) < MAX_UNITS and abs(event.held) < MAX_UNITS
                    and 0 <= event.order_id < MAX_ORDER_ID
                    and "\x00" not in event.account + event.asset + event.market
                    + event.reference):
                raise ValueError("a movement out of range")
            if isinstance(event, Fill) and not (
                    all(0 <= amount < MAX_UNITS for amount in (
                        event.value, event.delivered, event.fee, event.released))
                    and 0 <= event.order_id < MAX_ORDER_ID
                    and "\x00" not in event.account + event.market + event.base
                    + event.quote):
                raise ValueError("a fill out of range")
    return batches


def ledger_rows(shard: int, stream_sequence: int, sequence: int,
                messages: list[SequencedCommand]) -> LedgerRows:
    """The rows of a batch read after (``stream_sequence``, ``sequence``)."""
    rows = LedgerRows(stream_sequence, sequence)
    for message in messages:
        rows.stream_sequence = message.sequence
        try:
            batches = checked(shard, rows.sequence, message.data)
        except ValueError as exc:
            log.warning("ledger recorder %d: events message %d refused (%s); quarantined",
                        shard, message.sequence, str(exc)[:200])
            UNTRUSTED_SKIPPED.labels("recorder", "ledger events").inc()
            rows.quarantined.append((shard, message.sequence, message.data, str(exc)[:500]))
            continue
        for batch in batches:
            rows.add(shard, message.sequence, batch)
    return rows


async def record_ledger(connection: asyncpg.Connection, shard: int, after: int,
                        rows: LedgerRows) -> None:
    """Write one batch in one transaction, moving the position on from ``after`` (the
    stream sequence it was read after); ``Resync`` if the position is elsewhere."""
    async with connection.transaction():
        moved = await connection.execute(
            "UPDATE ledger_positions SET stream_sequence = $2, sequence = $3,"
            " updated_at = now() WHERE shard = $1 AND stream_sequence = $4",
            shard, rows.stream_sequence, rows.sequence, after)
        if moved != "UPDATE 1":
            raise Resync
        if rows.journal:
            await connection.copy_records_to_table("ledger_journal", records=rows.journal,
                                                   columns=JOURNAL_COLUMNS)
        if rows.quarantined:
            await connection.copy_records_to_table("ledger_quarantine",
                                                   records=rows.quarantined,
                                                   columns=QUARANTINE_COLUMNS)
        if rows.balances:
            keys = sorted(rows.balances)  # one lock order for every writer
            await connection.execute(
                "INSERT INTO ledger_balances (shard, account, asset, available, held,"
                " sequence) SELECT $1, * FROM unnest($2::text[], $3::text[],"
                " $4::numeric[], $5::numeric[], $6::bigint[])"
                " ON CONFLICT (shard, account, asset) DO UPDATE SET"
                " available = ledger_balances.available + excluded.available,"
                " held = ledger_balances.held + excluded.held, sequence = excluded.sequence",
                shard, [account for account, _ in keys], [asset for _, asset in keys],
                *([rows.balances[key][column] for key in keys] for column in range(3)))


async def ledger_position(connection: asyncpg.Connection, shard: int) -> tuple[int, int]:
    """(last events message recorded, last command sequence journaled) of a shard."""
    await connection.execute(
        "INSERT INTO ledger_positions (shard, stream_sequence, sequence) VALUES ($1, 0, 0)"
        " ON CONFLICT (shard) DO NOTHING", shard)
    row = await connection.fetchrow(
        "SELECT stream_sequence, sequence FROM ledger_positions WHERE shard = $1", shard)
    return int(row["stream_sequence"]), int(row["sequence"])


class LedgerRecorder:
    """Records one ledger shard until cancelled."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, shard: int, *,
                 batch: int = 1024) -> None:
        self.nc = nc
        self.pool = pool
        self.shard = shard
        self.batch = batch
        self.what = f"ledger recorder {shard}"
        self.position = 0
        """The last events-stream sequence recorded."""
        self.sequence = 0
        """The last ledger command sequence journaled."""

    async def run(self) -> None:
        await await_streams(self.nc.jetstream(), [ledger_event_stream(self.shard)],
                            f"ledger shard {self.shard}")
        while True:
            self.position, self.sequence = await with_connection(
                self.pool, lambda connection: ledger_position(connection, self.shard),
                self.what)
            LEDGER_RECORDED.labels(str(self.shard)).set(self.position)
            log.info("%s: resuming after events message %d", self.what, self.position)
            try:
                await self._consume()
            except Resync:
                log.warning("%s: the database's position moved; continuing from it",
                            self.what)
            except Exception:  # heal: start again from the database's position
                log.exception("%s failed; starting again in 1 s", self.what)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        feed = StreamFeed(self.nc, ledger_event_stream(self.shard), self.position + 1,
                          batch=self.batch, max_buffered=4 * self.batch)
        await feed.start()
        try:
            while True:
                messages = await feed.next_batch()
                rows = ledger_rows(self.shard, self.position, self.sequence, messages)

                async def write(connection: asyncpg.Connection,
                                rows: LedgerRows = rows) -> None:
                    await self._write(connection, rows)

                await with_connection(self.pool, write, self.what)
                self.position, self.sequence = rows.stream_sequence, rows.sequence
                LEDGER_RECORDED.labels(str(self.shard)).set(self.position)
        finally:
            await feed.stop()

    async def _write(self, connection: asyncpg.Connection, rows: LedgerRows) -> None:
        try:
            await record_ledger(connection, self.shard, self.position, rows)
        except asyncpg.UniqueViolationError as exc:
            raise Resync from exc
