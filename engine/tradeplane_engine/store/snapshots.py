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

A snapshot can also be asked for, on ``tp.recorder.<market>.snapshot`` with
``{"through": S}``: once the snapshotter has applied command S, it stores a snapshot at
the command it has reached (unless it holds one there already) and answers with its
sequence and state hash. That is how a market's last state is kept when the market is
removed: its commands are sequenced to the end (cancel-only, every order canceled), then
the snapshot through the last of them is taken before the streams go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from tradeplane_engine.core import BookLevel, Engine, TradingModeChanged
from tradeplane_engine.core.state import digest
from tradeplane_engine.errors import TradeplaneEngineError
from tradeplane_engine.feed import StreamFeed
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.streams import replay_spec
from tradeplane_engine.wire import (
    MAX_REQUEST,
    SNAPSHOT_QUEUE,
    MarketDefinition,
    command_stream,
    decode_command,
    recorder_subject,
)

log = logging.getLogger(__name__)

KEEP = 3
"""Snapshots kept per market; older ones are deleted."""

REQUEST_TIMEOUT = 10.0
"""Seconds within which a snapshot request is answered: the snapshotter reaching the
requested command and the snapshot being stored both count against it."""

_encode = msgspec.json.Encoder().encode


class SnapshotError(StrEnum):
    """Why a snapshot request got no snapshot: the ``code`` of the error reply. Stable."""

    BAD_REQUEST = "BAD_REQUEST"
    """The request is not ``{"through": S}`` with S a command sequence (1 or more)."""
    NOT_CAUGHT_UP = "NOT_CAUGHT_UP"
    """The snapshotter had not applied command S in time: S is not in the command stream
    (yet), or the snapshotter is behind or restarting. Asking again is safe."""
    NOT_STORED = "NOT_STORED"
    """The snapshot could not be stored in time (PostgreSQL unavailable, or failing).
    Asking again is safe."""


class SnapshotRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What ``tp.recorder.<market>.snapshot`` takes."""

    through: Annotated[int, msgspec.Meta(ge=1)]
    """The snapshot must include at least the commands up to this sequence."""


_decode_request = msgspec.json.Decoder(SnapshotRequest).decode


class SnapshotUnavailable(TradeplaneEngineError):  # noqa: N818 - an outcome a requester is told, by code
    """No snapshot could be given for a request; ``code`` says why."""

    def __init__(self, code: SnapshotError, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    """Keeps a market's snapshots current until cancelled, and takes one when asked."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, definition: MarketDefinition, *,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.nc = nc
        self.pool = pool
        self.definition = definition
        self.market = definition.name
        self.every = max(1, definition.snapshot_every)
        self.request_timeout = request_timeout
        self.position = 0
        """The last command applied to the replica's engine."""
        self.taken = 0
        self._engine: Engine | None = None
        """The replica, at ``position``; None while it is being (re)built."""
        self._book_sequence = 0
        self._stored: tuple[int, str] | None = None
        """(sequence, state hash) of the newest snapshot this replica knows is stored."""
        self._advanced = asyncio.Event()
        """Set (and replaced) whenever ``position`` moves or the replica is rebuilt."""
        self._requests: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        subscription = await self.nc.subscribe(recorder_subject(self.market, "snapshot"),
                                               queue=SNAPSHOT_QUEUE, cb=self._on_request)
        try:
            while True:
                try:
                    await self._follow()
                except Exception:  # start again from the newest snapshot
                    log.exception("snapshotter %s failed; starting again in 1 s", self.market)
                    await asyncio.sleep(1.0)
        finally:
            for request in list(self._requests):
                request.cancel()
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _follow(self) -> None:
        try:
            await self._replicate()
        finally:
            self._engine = None  # whatever happened mid-command, nobody snapshots it

    async def _replicate(self) -> None:
        self._engine = None
        latest = await self._newest()
        if latest is None:
            spec = await replay_spec(self.nc.jetstream(), self.definition)
            engine, position, book_sequence = Engine(spec), 0, 0
            self._stored = None
        else:
            engine, position, book_sequence = (latest.engine(), latest.sequence,
                                               latest.book_sequence)
            self._stored = (latest.sequence, latest.state_hash)
        self._engine, self.position, self._book_sequence = engine, position, book_sequence
        self._advance()
        feed = StreamFeed(self.nc, command_stream(self.market), position + 1,
                           max_buffered=4 * 512, commands=True)
        await feed.start()
        try:
            while True:
                batch = await feed.next_batch()
                for number, command in enumerate(batch):
                    try:
                        events = engine.apply(decode_command(command.data, command.sequence,
                                                             command.timestamp, command.index))
                    except msgspec.DecodeError:  # what the serving engine skips, skip too
                        events = []
                    if any(isinstance(event, (BookLevel, TradingModeChanged))
                           for event in events):
                        self._book_sequence = command.sequence
                    if number + 1 < len(batch) and batch[number + 1].sequence == command.sequence:
                        continue  # a message's commands all or none: so is a snapshot
                    self.position = command.sequence
                    if command.sequence % self.every == 0:
                        await self._store(self._capture())
                self._advance()
        finally:
            await feed.stop()

    def _advance(self) -> None:
        """Wake whoever waits for the replica to reach a sequence."""
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def _newest(self) -> Snapshot | None:
        return await with_connection(
            self.pool, lambda connection: latest_snapshot(connection, self.market),
            f"snapshotter {self.market}")

    def _capture(self) -> Snapshot:
        """The replica's state now. Synchronous, so no command is applied halfway through:
        whenever this runs, the replica's state is exactly ``position``'s."""
        assert self._engine is not None
        state = self._engine.snapshot()
        return Snapshot(self.market, self.position, self._book_sequence, state, digest(state))

    async def _store(self, snapshot: Snapshot) -> None:
        await with_connection(self.pool,
                              lambda connection: save_snapshot(connection, snapshot),
                              f"snapshot of {self.market} at {snapshot.sequence}")
        if self._stored is None or snapshot.sequence >= self._stored[0]:
            self._stored = (snapshot.sequence, snapshot.state_hash)
        self.taken += 1
        log.info("market %s: snapshot at %d (%d bytes)", self.market, snapshot.sequence,
                 len(snapshot.state))

    # -- on request --------------------------------------------------------------------

    async def snapshot_through(self, through: int,
                               timeout: float | None = None) -> tuple[int, str]:
        """A stored snapshot that includes command ``through``: (its sequence, state hash).

        Waits for the replica to apply ``through``, then stores a snapshot at the command
        it has reached, unless the newest stored one is there already (so asking twice
        stores once). Everything within ``timeout`` (default ``request_timeout``), else
        ``SnapshotUnavailable``. The snapshot is stored as the scheduled ones are, and the
        same retention applies: it counts among the newest ``KEEP``.
        """
        deadline = asyncio.get_running_loop().time() + (
            self.request_timeout if timeout is None else timeout)
        try:
            async with asyncio.timeout_at(deadline):
                while self._engine is None or self.position < through:
                    await self._advanced.wait()
        except TimeoutError:
            raise SnapshotUnavailable(
                SnapshotError.NOT_CAUGHT_UP,
                f"the snapshotter of {self.market} has applied commands through "
                f"{self.position}, not yet {through}") from None
        if self._stored is not None and self._stored[0] == self.position:
            return self._stored
        snapshot = self._capture()
        try:
            async with asyncio.timeout_at(deadline):
                await self._store(snapshot)
        except TimeoutError:
            raise SnapshotUnavailable(
                SnapshotError.NOT_STORED,
                f"the snapshot of {self.market} at {snapshot.sequence} could not be stored "
                "in time (is PostgreSQL available?)") from None
        return snapshot.sequence, snapshot.state_hash

    async def _on_request(self, msg: Msg) -> None:
        """Each request in its own task: one waiting for its sequence holds up no other."""
        if not msg.reply:
            return  # nobody to answer; a snapshot is taken only for an answer
        task = asyncio.create_task(self._answer(msg))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _answer(self, msg: Msg) -> None:
        """Reply with the snapshot, or with an error and its code; never raise."""
        reply: dict[str, Any]
        try:
            if len(msg.data) > MAX_REQUEST:
                raise msgspec.DecodeError(f"a request over {MAX_REQUEST} bytes")
            request = _decode_request(msg.data)
            sequence, state_hash = await self.snapshot_through(request.through)
            reply = {"market": self.market, "sequence": sequence, "stateHash": state_hash}
        except msgspec.DecodeError as exc:  # ValidationError included
            reply = self._error(SnapshotError.BAD_REQUEST,
                                f'expected {{"through": <command sequence>}}: {exc}')
        except SnapshotUnavailable as exc:
            reply = self._error(exc.code, str(exc))
        except Exception as exc:  # a request never ends the snapshotter
            log.exception("snapshotter %s: snapshot request failed", self.market)
            reply = self._error(SnapshotError.NOT_STORED, f"{type(exc).__name__}: {exc}")
        try:
            await msg.respond(_encode(reply))
        except Exception as exc:
            log.warning("snapshotter %s: could not answer a snapshot request: %s",
                        self.market, exc)

    def _error(self, code: SnapshotError, message: str) -> dict[str, Any]:
        return {"error": message, "code": code.value, "market": self.market}
