"""Ledger snapshots in PostgreSQL, taken off the ledger's hot path (docs/ledger.md).

As a market's snapshotter (``store.snapshots``): a replica of a ledger shard that
publishes nothing. It reads the shard's command stream, applies every command to the
same pure ``Ledger`` (skipping what every replica skips, ``ledger_commands``), and at
every stream sequence that is a multiple of ``every`` stores ``Ledger.snapshot()`` with
its sequence and state hash. A restarted ledger replica starts from the newest snapshot
that goes no further than what its events stream holds, and replays from the next
command.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client

from tradeplane_engine.feed import StreamFeed
from tradeplane_engine.ledger import Ledger
from tradeplane_engine.ledger_commands import ledger_command
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.following import await_streams
from tradeplane_engine.wire import ledger_command_stream, ledger_name

log = logging.getLogger(__name__)

EVERY = 10_000
"""Ledger commands between two snapshots: a restart replays fewer than this many."""
KEEP = 3
"""Snapshots kept per shard (the newest)."""


@dataclass(frozen=True)
class LedgerSnapshot:
    shard: int
    sequence: int
    state: bytes
    state_hash: str

    def ledger(self) -> Ledger:
        """The shard as it was; refuses a snapshot whose bytes do not match its hash."""
        if hashlib.sha256(self.state).hexdigest() != self.state_hash:
            raise ValueError(f"ledger snapshot {self.shard}@{self.sequence} does not match "
                             "its hash")
        return Ledger.restore(self.state)


async def latest_ledger_snapshot(connection: asyncpg.Connection, shard: int,
                                 at_most: int | None = None) -> LedgerSnapshot | None:
    """The newest snapshot of ``shard``, or the newest with no command after ``at_most``."""
    row = await connection.fetchrow(
        "SELECT sequence, state, state_hash FROM ledger_snapshots WHERE shard = $1"
        " AND sequence <= $2 ORDER BY sequence DESC LIMIT 1", shard,
        2**63 - 1 if at_most is None else at_most)
    if row is None:
        return None
    return LedgerSnapshot(shard, row["sequence"], bytes(row["state"]), row["state_hash"])


async def save_ledger_snapshot(connection: asyncpg.Connection,
                               snapshot: LedgerSnapshot) -> None:
    async with connection.transaction():
        await connection.execute(
            "INSERT INTO ledger_snapshots (shard, sequence, state, state_hash)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (shard, sequence) DO NOTHING",
            snapshot.shard, snapshot.sequence, snapshot.state, snapshot.state_hash)
        await connection.execute(
            "DELETE FROM ledger_snapshots WHERE shard = $1 AND sequence < ALL ("
            " SELECT sequence FROM ledger_snapshots WHERE shard = $1"
            " ORDER BY sequence DESC LIMIT $2)", snapshot.shard, KEEP)


class LedgerSnapshotter:
    """Keeps one shard's snapshots current until cancelled."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, shard: int, shards: int, *,
                 every: int = EVERY) -> None:
        self.nc = nc
        self.pool = pool
        self.shard = shard
        self.shards = shards
        self.name = ledger_name(shard)
        self.every = max(1, every)
        self.position = 0
        """The last command applied to the replica."""
        self.taken = 0

    async def run(self) -> None:
        await await_streams(self.nc.jetstream(), [ledger_command_stream(self.shard)],
                            f"snapshotter {self.name}", "the ledger")
        while True:
            try:
                await self._replicate()
            except Exception:  # start again from the newest snapshot
                log.exception("snapshotter %s failed; starting again in 1 s", self.name)
                await asyncio.sleep(1.0)

    async def _replicate(self) -> None:
        newest = await with_connection(
            self.pool, lambda connection: latest_ledger_snapshot(connection, self.shard),
            f"snapshotter {self.name}")
        ledger = newest.ledger() if newest is not None else Ledger(self.shard, self.shards)
        self.position = newest.sequence if newest is not None else 0
        feed = StreamFeed(self.nc, ledger_command_stream(self.shard), self.position + 1,
                          max_buffered=4 * 512)
        await feed.start()
        try:
            while True:
                for command in await feed.next_batch():
                    decoded = ledger_command(self.name, command)
                    if decoded is not None:
                        ledger.apply(decoded)
                    self.position = command.sequence
                    if command.sequence % self.every == 0:
                        await self._store(ledger)
        finally:
            await feed.stop()

    async def _store(self, ledger: Ledger) -> None:
        state = ledger.snapshot()
        snapshot = LedgerSnapshot(self.shard, self.position, state,
                                  hashlib.sha256(state).hexdigest())
        await with_connection(self.pool,
                              lambda connection: save_ledger_snapshot(connection, snapshot),
                              f"snapshot of {self.name} at {self.position}")
        self.taken += 1
        log.info("%s: snapshot at %d (%d bytes)", self.name, self.position, len(state))
