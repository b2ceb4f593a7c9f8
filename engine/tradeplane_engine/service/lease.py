"""Leader election for a market's engine replicas: a lease in a NATS key-value bucket.

Why NATS rather than a PostgreSQL lease row: the replicas already depend on NATS for
every command, the bucket's compare-and-set is atomic (an update names the revision it
replaces), and trading must not stop when PostgreSQL does (the persistence issue keeps
trading going through a database outage; a lease in the database would end that).

The lease of market M is key M in ``tp-leases``: ``{"holder", "epoch", "taken"}`` (how
the holder got it: election, failover or handover). The holder
renews it every ``renew_every`` seconds with an update that names the last revision; if
that fails, someone else has taken it, and the holder steps down at once. A standby
watches the key and measures, on its own monotonic clock, how long ago it last saw a
renewal — no two hosts' clocks are ever compared. Past ``timeout`` without one, it
takes the lease with the next epoch, naming the revision it saw: of several standbys
trying at once exactly one wins. The epoch only grows, and every events message the
leader publishes is fenced by the events stream's expected last sequence as well, so a
leader that lost its lease while paused cannot write even before it notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

LEASES_BUCKET = "tp-leases"
REPLICAS_BUCKET = "tp-replicas"
"""Each replica's status, key ``<market>.<replica>``, renewed every second; an entry
not renewed for 10 s expires (a replica that is gone)."""


class LeaseValue(msgspec.Struct, frozen=True):
    holder: str
    epoch: int
    handover: str | None = None
    """A planned switchover: the replica the holder hands the lease to."""
    taken: str = "election"
    """How the holder got the lease: ``election`` (the first), ``failover`` (the last
    holder lapsed) or ``handover`` (a planned switchover); the operator reports them."""


@dataclass
class LeaseState:
    holder: str = ""
    epoch: int = 0
    revision: int = 0
    handover: str | None = None
    seen_at: float = 0.0
    """When this replica last saw the lease change (its own monotonic clock)."""
    taken: str = "election"


async def replicas_bucket(js: JetStreamContext, replicas: int = 1,
                          memory: bool = False) -> KeyValue:
    try:
        return await js.key_value(REPLICAS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=REPLICAS_BUCKET, history=1, replicas=replicas, ttl=10,
            storage=StorageType.MEMORY if memory else StorageType.FILE))


async def leases_bucket(js: JetStreamContext, replicas: int = 1, memory: bool = False) -> KeyValue:
    try:
        return await js.key_value(LEASES_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=LEASES_BUCKET, history=1, replicas=replicas,
            storage=StorageType.MEMORY if memory else StorageType.FILE))


class Lease:
    """One replica's view of one market's lease; calls back on promotion and demotion."""

    def __init__(self, kv: KeyValue, market: str, replica: str, *,
                 on_promoted: Callable[[int], Awaitable[None]],
                 on_demoted: Callable[[], Awaitable[None]],
                 renew_every: float = 0.1, timeout: float = 0.5) -> None:
        self.kv = kv
        self.market = market
        self.replica = replica
        self.on_promoted = on_promoted
        self.on_demoted = on_demoted
        self.renew_every = renew_every
        self.timeout = timeout
        self.state = LeaseState()
        self.leading = False

    @property
    def epoch(self) -> int:
        return self.state.epoch

    async def run(self) -> None:
        """Watch, renew, take over, step down — until cancelled."""
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                if self.leading:
                    await self._renew()
                    await asyncio.sleep(self.renew_every)
                else:
                    await self._maybe_take()
                    await asyncio.sleep(self.renew_every / 3)
        finally:
            watcher.cancel()

    async def step_down(self) -> None:
        """Give up leading now (the data plane refused a write): let the lease lapse."""
        if self.leading:
            self.leading = False
            log.warning("market %s: replica %s steps down from epoch %d", self.market,
                        self.replica, self.state.epoch)
            await self.on_demoted()

    async def hand_over(self, target: str) -> None:
        """A planned switchover: name ``target`` in the lease; it takes over at once."""
        if not self.leading:
            raise RuntimeError("only the leader can hand over")
        value = LeaseValue(self.replica, self.state.epoch, handover=target,
                           taken=self.state.taken)
        self.state.revision = await self.kv.update(self.market, msgspec.json.encode(value),
                                                   last=self.state.revision)
        self.leading = False
        await self.on_demoted()

    # -- internals -----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Follow the lease key for ever; a watch that ends (a reconnect) is made again."""
        while True:
            try:
                watcher = await self.kv.watch(self.market)
                async for entry in watcher:
                    if entry is not None and entry.revision is not None and entry.value:
                        await self._saw(entry.value, entry.revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: watch again
                log.warning("market %s: lease watch failed (%s); watching again",
                            self.market, type(exc).__name__)
            await asyncio.sleep(self.renew_every)

    async def _saw(self, raw: bytes, revision: int) -> None:
        value = msgspec.json.decode(raw, type=LeaseValue)
        self.state = LeaseState(value.holder, value.epoch, revision, value.handover,
                                asyncio.get_running_loop().time(), value.taken)
        if self.leading and value.holder != self.replica:
            await self.step_down()

    async def _maybe_take(self) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        named = state.handover == self.replica
        lapsed = state.revision and loop.time() - state.seen_at > self.timeout
        if not state.revision:
            await self._create()
        elif named or (lapsed and state.handover is None) or (
                lapsed and loop.time() - state.seen_at > 3 * self.timeout):
            await self._take(state.revision, state.epoch + 1,
                             "handover" if named else "failover")

    async def _create(self) -> None:
        try:
            await self.kv.get(self.market)
            return  # exists: the watcher will tell us about it
        except KeyNotFoundError:
            pass
        try:
            revision = await self.kv.create(self.market, msgspec.json.encode(
                LeaseValue(self.replica, 1)))
        except KeyWrongLastSequenceError:
            return  # another replica created it first
        await self._won(revision, 1, "election")

    async def _take(self, revision: int, epoch: int, taken: str) -> None:
        try:
            new_revision = await self.kv.update(
                self.market, msgspec.json.encode(LeaseValue(self.replica, epoch, taken=taken)),
                last=revision)
        except KeyWrongLastSequenceError:
            # Someone else renewed or took it: see what the lease is now.
            entry = await self.kv.get(self.market)
            if entry.value and entry.revision:
                await self._saw(entry.value, entry.revision)
            return
        await self._won(new_revision, epoch, taken)

    async def _won(self, revision: int, epoch: int, taken: str) -> None:
        self.state = LeaseState(self.replica, epoch, revision, None,
                                asyncio.get_running_loop().time(), taken)
        self.leading = True
        log.info("market %s: replica %s leads with epoch %d", self.market, self.replica, epoch)
        await self.on_promoted(epoch)

    async def _renew(self) -> None:
        state = self.state
        try:
            state.revision = await self.kv.update(
                self.market, msgspec.json.encode(LeaseValue(self.replica, state.epoch,
                                                            taken=state.taken)),
                last=state.revision)
        except KeyWrongLastSequenceError:
            await self.step_down()
        except Exception as exc:
            log.warning("market %s: lease renewal failed (%s)", self.market,
                        type(exc).__name__)
