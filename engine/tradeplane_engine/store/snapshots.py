"""Engine snapshots in PostgreSQL, taken off the matching engine's hot path.

The snapshotter is a replica of the market's engine that publishes nothing: it reads
the same command stream, applies every command to the same pure core, and every
``snapshotEvery`` commands (at stream sequences that are multiples of it, the same on
every run) stores ``Engine.snapshot()`` with the stream sequence it includes, the last
command that changed the book, and the state hash. Taking a snapshot costs the
snapshotter, never the engine that serves orders. Because the core is deterministic,
the snapshot at sequence S is the serving engine's state at S; the state hash proves it.

A restarted engine loads the newest snapshot that does not go past the last command
whose events it published (the snapshotter may be ahead of a dead engine: the commands
in between still need their events published) and replays the command stream from the
next sequence. So the command stream must keep at least everything after the newest
snapshot: with ``snapshotEvery`` N, a retention of fewer than ``RETAINED_INTERVALS`` × N
commands is refused (``StreamSettings.check``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.aio.client import Client

from tradeplane_engine.core import BookLevel, Engine, TradingModeChanged
from tradeplane_engine.core.state import digest
from tradeplane_engine.feed import CommandFeed
from tradeplane_engine.store.errors import with_connection
from tradeplane_engine.wire import MarketDefinition, command_stream, decode_command

log = logging.getLogger(__name__)

KEEP = 3
"""Snapshots kept per market; older ones are deleted."""


@dataclass(frozen=True)
class Snapshot:
    market: str
    sequence: int
    """The last command-stream sequence the state includes."""
    book_sequence: int
    """The last command that changed the book (for the L2 delta chain)."""
    state: bytes
    state_hash: str

    def engine(self) -> Engine:
        """The engine as it was; refuses a snapshot whose bytes do not match its hash."""
        if digest(self.state) != self.state_hash:
            raise ValueError(f"snapshot {self.market}@{self.sequence} does not match its hash")
        return Engine.restore(self.state)


async def latest_snapshot(connection: asyncpg.Connection, market: str,
                          at_most: int | None = None) -> Snapshot | None:
    """The newest snapshot, or the newest that includes no command after ``at_most``."""
    row = await connection.fetchrow(
        "SELECT sequence, book_sequence, state, state_hash FROM snapshots"
        " WHERE market = $1 AND sequence <= $2 ORDER BY sequence DESC LIMIT 1", market,
        2**63 - 1 if at_most is None else at_most)
    if row is None:
        return None
    return Snapshot(market, row["sequence"], row["book_sequence"], bytes(row["state"]),
                    row["state_hash"])


async def save_snapshot(connection: asyncpg.Connection, snapshot: Snapshot) -> None:
    async with connection.transaction():
        await connection.execute(
            "INSERT INTO snapshots (market, sequence, book_sequence, state, state_hash)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (market, sequence) DO NOTHING",
            snapshot.market, snapshot.sequence, snapshot.book_sequence, snapshot.state,
            snapshot.state_hash)
        await connection.execute(
            "DELETE FROM snapshots WHERE market = $1 AND sequence < ALL ("
            " SELECT sequence FROM snapshots WHERE market = $1"
            " ORDER BY sequence DESC LIMIT $2)", snapshot.market, KEEP)


class Snapshotter:
    """Keeps a market's snapshots current until cancelled."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, definition: MarketDefinition) -> None:
        self.nc = nc
        self.pool = pool
        self.definition = definition
        self.market = definition.name
        self.every = max(1, definition.snapshot_every)
        self.position = 0
        self.taken = 0

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except Exception:  # start again from the newest snapshot
                log.exception("snapshotter %s failed; starting again in 1 s", self.market)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        latest = await self._newest()
        if latest is None:
            engine, book_sequence = Engine(self.definition.spec()), 0
        else:
            engine, book_sequence = latest.engine(), latest.book_sequence
            self.position = latest.sequence
        feed = CommandFeed(self.nc, command_stream(self.market), self.position + 1,
                           max_buffered=4 * 512)
        await feed.start()
        try:
            while True:
                for command in await feed.next_batch():
                    try:
                        events = engine.apply(decode_command(command.data, command.sequence,
                                                             command.timestamp))
                    except msgspec.DecodeError:  # what the serving engine skips, skip too
                        events = []
                    if any(isinstance(event, (BookLevel, TradingModeChanged))
                           for event in events):
                        book_sequence = command.sequence
                    self.position = command.sequence
                    if command.sequence % self.every == 0:
                        await self._save(engine, book_sequence)
        finally:
            await feed.stop()

    async def _newest(self) -> Snapshot | None:
        return await with_connection(
            self.pool, lambda connection: latest_snapshot(connection, self.market),
            f"snapshotter {self.market}")

    async def _save(self, engine: Engine, book_sequence: int) -> None:
        state = engine.snapshot()
        snapshot = Snapshot(self.market, self.position, book_sequence, state, digest(state))
        await with_connection(self.pool,
                              lambda connection: save_snapshot(connection, snapshot),
                              f"snapshot of {self.market} at {self.position}")
        self.taken += 1
        log.info("market %s: snapshot at %d (%d bytes)", self.market, self.position,
                 len(state))
