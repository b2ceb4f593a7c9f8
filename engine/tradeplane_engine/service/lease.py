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
from prometheus_client import Counter

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.errors import TradeplaneEngineError
from tradeplane_engine.wire import LEASES_BUCKET, REPLICAS_BUCKET

log = logging.getLogger(__name__)

LEASE_ERRORS = Counter(
    "tradeplane_engine_lease_errors",
    "Lease operations that failed and were tried again: reason nats (NATS away or slow) "
    "or unreadable (a lease value that is not a lease)", ["market", "reason"])



class LeaseValue(msgspec.Struct, frozen=True):
    holder: str
    epoch: int
    handover: str | None = None
    """A planned switchover: the replica the holder hands the lease to."""
    taken: str = "election"
    """How the holder got the lease: ``election`` (the first), ``failover`` (the last
    holder lapsed) or ``handover`` (a planned switchover); the operator reports them."""


class NotLeadingError(TradeplaneEngineError):
    """A handover asked of a replica that does not (or no longer) hold the lease."""


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
        self._watcher: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        """Held by the leader's renewal and by a handover, which both name the revision
        they replace: neither may make the other's revision stale."""

    @property
    def epoch(self) -> int:
        return self.state.epoch

    async def run(self) -> None:
        """Watch, renew, take over, step down — until cancelled.

        A NATS error (an outage, a request whose outcome is unknown) is logged, counted
        in ``tradeplane_engine_lease_errors_total``, and tried again at the next tick:
        the lease keeps its role right through any outage. Any other error is a defect
        and ends the task, which takes the market's service, and its process, down.
        """
        self._watcher = asyncio.create_task(self._watch(), name=f"lease watch {self.market}")
        try:
            while True:
                if self._watcher.done():
                    self._watcher.result()  # it never returns: this raises its defect
                try:
                    if self.leading:
                        started = asyncio.get_running_loop().time()
                        await self._renew()
                        took = asyncio.get_running_loop().time() - started
                        if took > self.timeout / 2:
                            log.warning("market %s: replica %s renewed its lease in %.3f s "
                                        "(the lease lapses after %.3f s)", self.market,
                                        self.replica, took, self.timeout)
                    else:
                        await self._maybe_take()
                except NATS_ERRORS as exc:
                    self._failed("leading" if self.leading else "standing by", exc)
                await asyncio.sleep(self.renew_every if self.leading else self.renew_every / 3)
        finally:
            self._watcher.cancel()

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
            raise NotLeadingError("only the leader can hand over")
        async with self._writing:
            if not self.leading:
                raise NotLeadingError("the lease was lost before the handover")
            value = LeaseValue(self.replica, self.state.epoch, handover=target,
                               taken=self.state.taken)
            self.state.revision = await self.kv.update(
                self.market, msgspec.json.encode(value), last=self.state.revision)
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
            except NATS_ERRORS as exc:
                self._failed("watching", exc)
            await asyncio.sleep(self.renew_every)

    async def _saw(self, raw: bytes, revision: int) -> None:
        """The lease as the bucket holds it at ``revision``.

        A value that is not a lease (nothing of ours writes one) counts as a lease held
        by nobody at the last epoch known: it lapses, and the next holder replaces it.
        """
        try:
            value = msgspec.json.decode(raw, type=LeaseValue)
        except msgspec.DecodeError as exc:
            LEASE_ERRORS.labels(self.market, "unreadable").inc()
            log.warning("market %s: the lease at revision %d is not a lease (%s); it will "
                        "lapse and be taken over", self.market, revision, exc)
            value = LeaseValue("", self.state.epoch)
        if revision < self.state.revision:
            return  # an older revision, from a watch that lags a direct read
        self.state = LeaseState(value.holder, value.epoch, revision, value.handover,
                                asyncio.get_running_loop().time(), value.taken)
        if self.leading and value.holder != self.replica:
            await self.step_down()

    def _failed(self, doing: str, exc: BaseException) -> None:
        LEASE_ERRORS.labels(self.market, "nats").inc()
        log.warning("market %s: replica %s, %s: NATS error on the lease (%s: %s); trying "
                    "again", self.market, self.replica, doing, type(exc).__name__, exc)

    async def _maybe_take(self) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        named = state.handover == self.replica
        lapsed = state.revision and loop.time() - state.seen_at > self.timeout
        if not state.revision:
            await self._create()
        elif named or (lapsed and state.handover is None) or (
                lapsed and loop.time() - state.seen_at > 3 * self.timeout):
            if not named and await self._changed_since(state.revision):
                return  # the watch lags (or died in an outage): the lease is alive
            await self._take(state.revision, state.epoch + 1,
                             "handover" if named else "failover")

    async def _changed_since(self, revision: int) -> bool:
        """Whether the lease moved past ``revision`` without the watch telling: read it
        directly before taking over, so a watch that went quiet never causes a failover."""
        try:
            entry = await self.kv.get(self.market)
        except KeyNotFoundError:
            return False
        if entry.value and entry.revision and entry.revision != revision:
            # Renewals come ten times a timeout: a watch that missed them all is dead
            # (a NATS restart can leave one silent). Watch anew.
            log.info("market %s: the lease watch went quiet; watching again", self.market)
            if self._watcher is not None:
                self._watcher.cancel()
            self._watcher = asyncio.create_task(self._watch(),
                                                name=f"lease watch {self.market}")
            await self._saw(entry.value, entry.revision)
            return True
        return False

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
        async with self._writing:
            if self.leading:  # a handover may have come first
                await self._renew_now()

    async def _renew_now(self) -> None:
        state = self.state
        try:
            revision = await self.kv.update(
                self.market, msgspec.json.encode(LeaseValue(self.replica, state.epoch,
                                                            taken=state.taken)),
                last=state.revision)
            # The watch may have replaced the state meanwhile (with this replica's previous
            # renewal): the next renewal names this one's revision all the same.
            self.state.revision = max(self.state.revision, revision)
        except KeyWrongLastSequenceError:
            if not await self._still_ours():
                await self.step_down()

    async def _still_ours(self) -> bool:
        """After a refused renewal: whether the lease is still this replica's, at this
        epoch. It is when an earlier renewal went through but its answer was lost (a
        timeout in an outage, sent again on reconnect): then go on from its revision."""
        entry = await self.kv.get(self.market)
        if not entry.value or not entry.revision:
            return False
        try:
            value = msgspec.json.decode(entry.value, type=LeaseValue)
        except msgspec.DecodeError:
            return False
        if value.holder != self.replica or value.epoch != self.state.epoch \
                or value.handover is not None:
            return False
        self.state.revision = entry.revision
        return True
