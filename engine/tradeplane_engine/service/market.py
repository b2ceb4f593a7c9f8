"""One market's engine service: the command stream in, events and market data out.

``MarketService`` puts together the parts that run one market replica and runs them:

- ``hotpath.HotPath`` applies each batch of commands to the pure core and publishes
  what it did (events stream first, then replies, private updates and market data);
- ``leadership.Leadership`` takes the lead when the lease says so, gives it up when it
  moves on, and hands it to a named standby;
- ``memory.OrderMemory`` keeps finished orders for status queries and a cancel's reply;
- ``requests.LeaderRequests`` answers what only the leader answers (status, order,
  openOrders, switchover, the book's snapshot);
- ``reports.ReplicaReports`` answers and reports this replica's status.

The service also says whether it is wedged (``watchdog.Watchdog``, asked by the
``/livez`` probe).

After a restart the service starts from the newest snapshot (if there is a database)
and replays the command stream from there, publishing nothing for commands whose events
the stream already holds; the market-data sequence numbers come out the same as before,
because they are counted from the commands, not from the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js.kv import KeyValue

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core import AnyEvent, Engine
from tradeplane_engine.feed import FeedError, SequencedCommand, StreamFeed
from tradeplane_engine.service.events import EventsPublisher
from tradeplane_engine.service.hotpath import HotPath
from tradeplane_engine.service.leadership import Leadership
from tradeplane_engine.service.lease import Lease
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.service.memory import OrderMemory
from tradeplane_engine.service.metrics import MarketMetrics
from tradeplane_engine.service.reports import ReplicaReports
from tradeplane_engine.service.requests import LeaderRequests
from tradeplane_engine.service.watchdog import Watchdog
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.snapshots import Snapshot, latest_snapshot
from tradeplane_engine.streams import (
    StreamSettings,
    ensure_market_streams,
    replay_spec,
)
from tradeplane_engine.wire import (
    HEADER_REPLY,
    MarketDefinition,
    PublicFormatter,
    command_stream,
    engine_subject,
    event_subject,
)

log = logging.getLogger(__name__)

class MarketService(Watchdog):
    """Runs one market: consume, apply, publish. ``run()`` until cancelled."""

    def __init__(self, nc: Client, definition: MarketDefinition,
                 settings: StreamSettings | None = None, *, batch: int = 512,
                 pool: asyncpg.Pool | None = None, replica: str = "solo",
                 leases: KeyValue | None = None, replicas: KeyValue | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.market = definition.name
        self.definition = definition
        self.settings = settings or StreamSettings()
        self.replica = replica
        self.pool = pool
        """PostgreSQL, for snapshots to start from (None: replay the whole stream)."""
        self.replicas = replicas
        """The replicas' status bucket, where this replica reports (None: it does not)."""
        self._batch = batch
        self._feed: StreamFeed | None = None
        engine = Engine(definition.spec())
        self.formatter = PublicFormatter(engine.spec)
        self.market_data = MarketData(self.market, self.formatter)
        self.events = EventsPublisher(nc, self.market)
        self.memory = OrderMemory(self.formatter)
        self.metrics = MarketMetrics(self)
        self.hot_path = HotPath(nc, self.market, replica, engine, self.market_data,
                                self.memory, self.events, self.metrics,
                                leading=leases is None)  # without a lease: leads alone
        self.requests = LeaderRequests(self)
        self.reports = ReplicaReports(self)
        self.leadership = Leadership(nc, self.market, replica, self.hot_path, leases,
                                     on_lead=self.requests.serve,
                                     on_stand_by=self.requests.stop)
        if self.leadership.lease is not None:
            self.hot_path.step_down = self.leadership.lease.step_down
        self.label = self.market
        self.start_watch()

    # -- what the rest of the engine (and its tests) read of a replica -----------------

    @property
    def engine(self) -> Engine:
        return self.hot_path.engine

    @property
    def ready(self) -> asyncio.Event:
        """Set once the service has caught up with what was published before it started."""
        return self.hot_path.ready

    @property
    def leading(self) -> bool:
        """Only the leader publishes; without a lease bucket a replica leads alone."""
        return self.hot_path.leading

    @property
    def epoch(self) -> int:
        return self.hot_path.epoch

    @property
    def lease(self) -> Lease | None:
        return self.leadership.lease

    @property
    def failovers(self) -> int:
        """Times this replica took the lead."""
        return self.leadership.failovers

    @property
    def last_failover(self) -> int | None:
        """When this replica last took the lead (ns since the epoch)."""
        return self.leadership.last_failover

    @property
    def published_through(self) -> int:
        """Commands up to this sequence already have their events in the events stream."""
        return self.hot_path.published_through

    @property
    def pending(self) -> list[tuple[SequencedCommand, bytes, list[AnyEvent]]]:
        """Applied while standing by, events not yet seen in the events stream."""
        return self.hot_path.pending

    @property
    def replayed(self) -> int:
        """Commands applied again at start, whose events were already published."""
        return self.hot_path.replayed

    async def process(self, batch: list[SequencedCommand]) -> None:
        await self.hot_path.process(batch)

    async def hand_over(self, target: str) -> str | None:
        """A planned switchover to the standby ``target`` (``Leadership.hand_over``)."""
        return await self.leadership.hand_over(target)

    def status(self, *, with_hash: bool = False) -> dict[str, Any]:
        return self.reports.status(with_hash=with_hash)

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        await self.watched(self._run())

    async def _run(self) -> None:
        await ensure_market_streams(self.js, self.definition, self.settings)
        hot_path = self.hot_path
        # A replay starts in the mode the stream's first command met, not the definition's
        # current one; a snapshot, if there is one, carries its own mode.
        hot_path.engine = Engine(await replay_spec(self.js, self.definition))
        self.memory.start_from(hot_path.engine)
        hot_path.stream_last, hot_path.published_through = (
            await hot_path.last_events_message())
        start = await self._restore(hot_path.published_through)
        if hot_path.published_through <= start:
            hot_path.ready.set()
        subscriptions = [
            await self.nc.subscribe(event_subject(self.market), cb=hot_path.on_published),
            await self.nc.subscribe(engine_subject(self.market, f"{self.replica}.status"),
                                    cb=self.reports.on_status),
        ]
        if self.leading:
            await self.requests.serve()
        commands = await self.js.stream_info(command_stream(self.market))
        if commands.state.messages and commands.state.first_seq > start + 1:
            raise FeedError(
                f"{command_stream(self.market)} starts at sequence {commands.state.first_seq}, "
                f"but the engine needs {start + 1}: its retention is shorter than the "
                "engine's recovery needs (keep more than the snapshot interval)")
        self._feed = StreamFeed(self.nc, command_stream(self.market), start + 1,
                                 batch=self._batch, reply_header=HEADER_REPLY,
                                 on_wait=self.turned, commands=True)
        await self.events.start()
        await self._feed.start()
        log.info("market %s: replaying the command stream; events published through %d",
                 self.market, hot_path.published_through)
        try:
            # The lease and the status reporter run beside the command loop; a task that
            # fails (a defect: NATS errors are survived inside each) ends the others and
            # the service, and so the process, which is then restarted whole.
            async with asyncio.TaskGroup() as group:
                self.leadership.tasks = group
                if self.lease is not None:
                    group.create_task(self.lease.run(), name=f"lease {self.market}")
                if self.replicas is not None:
                    group.create_task(self.reports.run(self.replicas),
                                      name=f"status report {self.market}")
                group.create_task(self._consume(), name=f"commands {self.market}")
        finally:
            await self.requests.stop()
            for subscription in subscriptions:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()
            await self._feed.stop()
            await self.events.stop()

    async def _consume(self) -> None:
        assert self._feed is not None
        self.turned()
        while True:
            batch = await self._feed.next_batch()
            self.in_hand = len(batch)
            await self.process(batch)
            self.in_hand = 0
            self.turned()

    async def _restore(self, published_through: int) -> int:
        """Start from the newest snapshot, if there is a database; the sequence it includes.

        Never from one past ``published_through``: the commands after it have not had
        their events published, so they must be applied here, not skipped.
        """
        if self.pool is None:
            return 0
        snapshot = await _newest_snapshot(self.pool, self.market, published_through)
        if snapshot is None:
            return 0
        self.hot_path.engine = snapshot.engine()
        self.memory.start_from(self.hot_path.engine)
        self.market_data.book_sequence = snapshot.book_sequence
        log.info("market %s: restored the snapshot at sequence %d", self.market,
                 snapshot.sequence)
        return snapshot.sequence


async def _newest_snapshot(pool: asyncpg.Pool, market: str, at_most: int) -> Snapshot | None:
    """The newest usable snapshot; waits for PostgreSQL, which holds what the stream may not."""
    return await with_connection(
        pool, lambda connection: latest_snapshot(connection, market, at_most),
        f"market {market} (its snapshot)")
