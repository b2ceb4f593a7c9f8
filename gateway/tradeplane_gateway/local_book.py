"""A local L2 book kept in step with a market: a snapshot, then deltas in sequence.

Each delta on ``tp.md.<market>.book`` gives the new totals of the levels it touched,
``sequence`` (the last command that changed the book) and ``prevSequence`` (the
previous delta's ``sequence``). The snapshot reply says the last command it includes.
The book subscribes first, buffers, asks for a snapshot, drops the deltas the snapshot
already holds and applies the rest; afterwards every delta must continue from the one
before (``prevSequence`` = the last applied ``sequence``). A broken chain (a lost
message, a slow consumer, an engine restart that lost its last messages) makes it
fetch a new snapshot and carry on: it resynchronises by itself.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any, Self

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tradeplane_engine.wire import book_snapshot_subject, book_subject

log = logging.getLogger(__name__)

Level = tuple[str, str]
"""(price, quantity) as decimal strings."""


class LocalBook:
    """``async with client.book("sol-usdt") as book:`` then ``book.bids``, ``book.asks``."""

    def __init__(self, nc: Client, market: str, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.market = market
        self.timeout = timeout
        self.sequence = 0
        """The command sequence the book is at (the last delta's, or the snapshot's)."""
        self.resyncs = 0
        """How many times a broken chain made the book fetch a new snapshot."""
        self.mode = ""
        self._bids: dict[Decimal, Level] = {}
        self._asks: dict[Decimal, Level] = {}
        self._pending: list[dict[str, Any]] = []
        self._synced = False
        self._from_snapshot = False
        self._changed = asyncio.Condition()
        self._sub: Subscription | None = None
        self._resync: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._sub = await self.nc.subscribe(book_subject(self.market), cb=self._on_delta)
        await self.nc.flush()
        await self._load_snapshot()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._resync is not None:
            self._resync.cancel()

    @property
    def bids(self) -> list[Level]:
        """Best (highest) price first."""
        return [self._bids[price] for price in sorted(self._bids, reverse=True)]

    @property
    def asks(self) -> list[Level]:
        """Best (lowest) price first."""
        return [self._asks[price] for price in sorted(self._asks)]

    async def wait_for_sequence(self, sequence: int, timeout: float | None = None) -> None:
        """Wait until the book reflects every command up to ``sequence``."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self._synced and self.sequence >= sequence),
                timeout or self.timeout)

    # -- keeping in step ---------------------------------------------------------------

    async def _on_delta(self, msg: Msg) -> None:
        await self.receive(msgspec.json.decode(msg.data))

    async def receive(self, delta: dict[str, Any]) -> None:
        """Apply one delta message, or buffer it while a snapshot is on its way."""
        if not self._synced:
            self._pending.append(delta)
            return
        sequence, previous = delta["sequence"], delta["prevSequence"]
        if sequence <= self.sequence:
            return  # the snapshot already holds it
        follows = previous <= self.sequence if self._from_snapshot else previous == self.sequence
        if not follows:
            log.info("book %s: at %d, a delta continues from %d; resynchronising",
                     self.market, self.sequence, previous)
            self._synced = False
            self._pending = [delta]
            self.resyncs += 1
            self._resync = asyncio.create_task(self._load_snapshot())
            return
        await self._apply(delta)

    async def _load_snapshot(self) -> None:
        # While no engine leads the market (a failover) nothing answers, and the
        # gateways' subscription to every market's snapshots means no "no responders"
        # either: ask again soon, waiting longer each time up to the timeout.
        attempt = min(self.timeout, 0.5)
        while True:
            try:
                answer = await self.nc.request(book_snapshot_subject(self.market), b"",
                                               timeout=attempt)
                snapshot = msgspec.json.decode(answer.data)
                if "error" not in snapshot:
                    break
            except (NoRespondersError, NatsTimeout):
                attempt = min(2 * attempt, self.timeout)
            await asyncio.sleep(0.1)  # the engine is starting or recovering
        self._bids = {Decimal(price): (price, quantity) for price, quantity in snapshot["bids"]}
        self._asks = {Decimal(price): (price, quantity) for price, quantity in snapshot["asks"]}
        self.sequence = snapshot["sequence"]
        self.mode = snapshot["mode"]
        pending, self._pending = self._pending, []
        self._synced = True
        self._from_snapshot = True
        async with self._changed:
            self._changed.notify_all()
        for delta in sorted(pending, key=lambda delta: int(delta["sequence"])):
            await self.receive(delta)

    async def _apply(self, delta: dict[str, Any]) -> None:
        for side, levels in ((self._bids, delta["bids"]), (self._asks, delta["asks"])):
            for price, quantity in levels:
                if quantity == "0":
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = (price, quantity)
        if "mode" in delta:
            self.mode = delta["mode"]
        self.sequence = delta["sequence"]
        self._from_snapshot = False
        async with self._changed:
            self._changed.notify_all()
