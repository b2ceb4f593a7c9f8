"""Which replica leads a market: taking the lead when the lease says so, giving it up
when it moves on, and handing it to a named standby (docs/failover.md).

The lease itself (``lease.Lease``) renews, expires and is won in NATS key-value; this
is what a replica does about it: a takeover that publishes from exactly where the
events stream ends, serving the leader's subjects only while leading, and a planned
switchover between two batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.kv import KeyValue

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.service.lease import Lease, NotLeadingError
from tradeplane_engine.service.replica import Replica
from tradeplane_engine.wire import engine_subject, is_subject

log = logging.getLogger(__name__)


class _Readiness(msgspec.Struct):
    ready: bool


class Leadership:
    """One replica's part in its market's leadership.

    ``on_lead`` starts what only the leader does (its subjects), ``on_stand_by`` stops
    it. Without a lease bucket the replica leads alone, from the start."""

    def __init__(self, nc: Client, market: str, replica: str, hot_path: Replica,
                 leases: KeyValue | None, *, on_lead: Callable[[], Awaitable[None]],
                 on_stand_by: Callable[[], Awaitable[None]]) -> None:
        self.nc = nc
        self.market = market
        self.replica = replica
        self.hot_path = hot_path
        self.lease = None if leases is None else Lease(
            leases, market, replica, on_promoted=self._promote, on_demoted=self._demote)
        self._on_lead = on_lead
        self._on_stand_by = on_stand_by
        self.failovers = 0
        """Times this replica took the lead."""
        self.last_failover: int | None = None
        """When this replica last took the lead (ns since the epoch)."""
        self.tasks: asyncio.TaskGroup | None = None
        """The service's tasks, where a takeover runs beside the lease's."""

    async def _promote(self, epoch: int) -> None:
        """The lease made this replica the leader: take up the lead beside the lease's
        task, which must go on renewing while the takeover publishes."""
        self.failovers += 1
        self.last_failover = time.time_ns()
        assert self.tasks is not None, "the lease runs inside the service's task group"
        self.tasks.create_task(self._take_lead(epoch), name=f"take the lead {self.market}")

    async def _take_lead(self, epoch: int) -> None:
        """Lead from exactly where the events stream ends: no gap, no duplicate."""
        hot_path = self.hot_path
        async with hot_path.lock:
            try:
                last = await hot_path.last_events_message()
            except NATS_ERRORS as exc:
                log.warning("market %s: cannot read where the events stream ends (%s); "
                            "letting the lease go", self.market, type(exc).__name__)
                if self.lease is not None:
                    await self.lease.step_down()
                return
            if not self._holds(epoch):
                return  # the lease moved on before the takeover began
            hot_path.epoch = epoch
            hot_path.stream_last, published = last
            hot_path.confirm(published)
            hot_path.published_through = published
            hot_path.leading = True
            await self._on_lead()
            if not self._holds(epoch):  # demoted while subscribing: nothing to stop then
                await self._on_stand_by()
                return
            rest, hot_path.pending = hot_path.pending, []
            log.info("market %s: replica %s leads (epoch %d) from sequence %d, %d applied "
                     "commands to publish", self.market, self.replica, epoch, published,
                     len(rest))
            if rest:
                await hot_path.publish(rest)

    def _holds(self, epoch: int) -> bool:
        return self.lease is None or (self.lease.leading and self.lease.epoch == epoch)

    async def _demote(self) -> None:
        self.hot_path.leading = False
        await self._on_stand_by()

    async def hand_over(self, target: str) -> str | None:
        """A planned switchover to the standby ``target``, between two batches: None once
        the lease names it, else why not."""
        if not self.hot_path.leading or self.lease is None:
            return f"{self.replica} does not lead {self.market}"
        if not is_subject(target):  # it names a status subject: no spaces, no wildcards
            return f"{target[:80]!r} is not a replica name"
        refusal = await self._unfit_standby(target)
        if refusal:
            return refusal
        try:
            # No batch in flight: the next one is the new leader's.
            async with self.hot_path.lock:
                await self.lease.hand_over(target)
        except NotLeadingError as exc:
            return str(exc)
        except NATS_ERRORS as exc:
            # The lease is as it was, or the handover happened and this leader sees that
            # it lost the lease at its next renewal: either way a leader is found again.
            return f"the lease could not be handed over: {type(exc).__name__}"
        log.info("market %s: handed the lead to %s", self.market, target)
        return None

    async def _unfit_standby(self, target: str) -> str | None:
        """Why ``target`` cannot take the lead now (None: it can): a switchover to a
        replica that is not there, or not caught up, would leave the market leaderless.
        The target itself is asked (its own status subject), not its last report."""
        if self.lease is None:
            return None
        try:
            reply = await self.nc.request(engine_subject(self.market, f"{target}.status"),
                                          b"", timeout=1.0)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return f"no replica {target} of market {self.market} is running"
        try:
            ready = msgspec.json.decode(reply.data, type=_Readiness).ready
        except msgspec.DecodeError:
            return f"{target} answered with no status"
        if not ready:
            return f"{target} has not caught up yet"
        return None
