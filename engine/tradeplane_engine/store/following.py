"""Every market in the markets bucket recorded, as markets come and go.

On Kubernetes the recorders are installed before any market exists, and markets are
added and removed later (the operator writes a Market's definition to ``tp-markets``
and deletes it with the Market). So a recorder without a market list follows the
bucket: a definition that appears starts the market's history queries, and its recorder
and snapshotter once its engine has created its streams (``record_market``); a deleted
or purged key stops them all.

Each market runs under its own supervisor task. A failure of one market's tasks is
logged and that market alone starts again after ``restart_delay``; the others go on
recording (one TaskGroup for every market would cancel them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.store.queries import History
from tradeplane_engine.store.recorder import RECORDED, RECORDER_LAG, Recorder
from tradeplane_engine.store.snapshots import Snapshotter
from tradeplane_engine.wire import (
    MarketDefinition,
    command_stream,
    definition_entry,
    event_stream,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

MarketTasks = Callable[[Client, asyncpg.Pool, MarketDefinition], Awaitable[None]]
"""What runs for one market until cancelled: ``record_market``, or a stand-in in tests."""

UNUSED_FIELDS = frozenset({"replicas", "fees", "engine", "trading_mode"})
"""Definition fields none of a market's tasks reads, so a change of them restarts
nothing. ``trading_mode`` is among them: a mode change is sequenced in the command
stream (``SetTradingMode``), where the snapshotter applies it, and a replay from the
first command takes the mode the stream recorded, not the definition's. Restarting the
snapshotter for it would only delay snapshot requests, such as the final one asked for
while a market is retired (made cancel-only first)."""

DELETED = ("DEL", "PURGE")
"""Key-value operations that remove a key."""

STREAMS_POLL = 0.25
"""Seconds between two looks for a new market's streams."""


async def streams_exist(js: JetStreamContext, market: str,
                        poll: float = STREAMS_POLL) -> None:
    """Wait until the market's command and events streams exist.

    Its engine creates them when it first starts, which on Kubernetes comes some time
    after the definition appears (the engine's pods are scheduled, images pulled);
    started before that, the recorder and the snapshotter would fail and retry, each
    logging a traceback a second."""
    await await_streams(js, [command_stream(market), event_stream(market)],
                        f"market {market}", "its engine", poll)


async def await_streams(js: JetStreamContext, streams: Sequence[str], what: str,
                        maker: str = "its service", poll: float = STREAMS_POLL) -> None:
    """Wait until every stream of ``streams`` exists, saying once that ``what`` waits."""
    waiting = False
    while True:
        try:
            for stream in streams:
                await js.stream_info(stream)
            return
        except NotFoundError:
            if not waiting:
                log.info("%s: waiting for %s to create its streams", what, maker)
                waiting = True
        await asyncio.sleep(poll)


async def record_market(nc: Client, pool: asyncpg.Pool, definition: MarketDefinition) -> None:
    """One market's history queries, and once its streams exist its recorder and
    snapshotter, until cancelled.

    Raises if the recorder or the snapshotter fails for good (the other one is then
    cancelled), so that whoever supervises it can start the market again."""
    history = History(nc, pool, definition)
    await history.start()
    try:
        await streams_exist(nc.jetstream(), definition.name)
        async with asyncio.TaskGroup() as group:
            group.create_task(Recorder(nc, pool, definition).run(),
                              name=f"recorder {definition.name}")
            group.create_task(Snapshotter(nc, pool, definition).run(),
                              name=f"snapshotter {definition.name}")
    finally:
        with contextlib.suppress(Exception):  # the connection may be closing already
            await history.stop()


def needs_restart(running: MarketDefinition, new: MarketDefinition) -> bool:
    """Whether a rewritten definition changes anything the market's tasks use."""
    return any(getattr(running, field) != getattr(new, field)
               for field in MarketDefinition.__struct_fields__ if field not in UNUSED_FIELDS)


class RecordedMarkets:
    """The markets this process records, kept equal to the markets bucket by ``follow``."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, *, restart_delay: float = 1.0,
                 tasks: MarketTasks = record_market) -> None:
        self.nc = nc
        self.pool = pool
        self.restart_delay = restart_delay
        self._run_market = tasks
        self._definitions: dict[str, MarketDefinition] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}

    @property
    def definitions(self) -> Mapping[str, MarketDefinition]:
        """The markets being recorded, by name, with the definitions they run with."""
        return MappingProxyType(self._definitions)

    async def follow(self, kv: KeyValue) -> None:
        """Apply every change of the bucket until cancelled, then stop every market.

        A watch that fails is started again; its first values then say which markets
        still exist, and the ones that no longer do are stopped."""
        try:
            while True:
                try:
                    await self._watch(kv)
                except Exception:
                    log.exception("watch of the markets bucket failed; watching again in "
                                  "%.1f s", self.restart_delay)
                await asyncio.sleep(self.restart_delay)
        finally:
            await self.stop_all()

    async def _watch(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        # Keys with a definition among the watch's first values; None once all are in.
        defined: set[str] | None = set()
        try:
            async for entry in watcher:
                if entry is None:  # the bucket's current contents have all arrived
                    if defined is not None:
                        for name in set(self._supervisors) - defined:
                            await self._stop(name, "no longer in the markets bucket")
                        defined = None
                    continue
                if defined is not None and entry.value and entry.operation not in DELETED:
                    defined.add(entry.key)
                await self.apply(entry.key, entry.value, entry.operation)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        """One change of the bucket: start, restart or stop the market it is about."""
        if operation in DELETED or not value:
            await self._stop(key, "deleted from the markets bucket")
            return
        try:
            definition = definition_entry(key, value)
        except ValueError as exc:  # msgspec's DecodeError included
            log.error("market %s: definition refused, nothing changes: %s", key[:80],
                      str(exc)[:200])
            UNTRUSTED_SKIPPED.labels("recorder", "market definition").inc()
            return
        running = self._definitions.get(key)
        if running is not None:
            if not needs_restart(running, definition):
                self._definitions[key] = definition
                return
            await self._stop(key, "its definition changed")
        self._start(definition)

    def _start(self, definition: MarketDefinition) -> None:
        name = definition.name
        log.info("market %s: recording", name)
        self._definitions[name] = definition
        self._supervisors[name] = asyncio.create_task(self._supervise(definition),
                                                      name=f"market {name}")

    async def _supervise(self, definition: MarketDefinition) -> None:
        """Run the market's tasks; whenever they fail, log it and start them again."""
        while True:
            try:
                await self._run_market(self.nc, self.pool, definition)
                log.error("market %s: recording stopped by itself; starting again in %.1f s",
                          definition.name, self.restart_delay)
            except Exception:
                log.exception("market %s: recording failed; starting again in %.1f s",
                              definition.name, self.restart_delay)
            await asyncio.sleep(self.restart_delay)

    async def _stop(self, name: str, why: str) -> None:
        """Stop a market's tasks and wait until they are gone, so that a market defined
        again never runs twice in this process."""
        self._definitions.pop(name, None)
        supervisor = self._supervisors.pop(name, None)
        if supervisor is None:
            return
        log.info("market %s: recording stopped: %s", name, why)
        supervisor.cancel()
        await asyncio.wait([supervisor])  # unlike awaiting it, keeps our own cancellation
        for gauge in (RECORDER_LAG, RECORDED):  # a removed market shows no stale figures
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    async def stop_all(self) -> None:
        """Stop every market's tasks (on shutdown), all at once."""
        await asyncio.gather(*(self._stop(name, "the recorder stops")
                               for name in list(self._supervisors)))
