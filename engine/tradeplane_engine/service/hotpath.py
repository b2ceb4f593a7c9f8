"""The hot path: apply each batch of commands to the core, then publish what it did.

For each batch the feed hands over, every command is applied to the pure core, then,
in this order:

1. each command's events go to the market's events stream (JetStream, message id
   ``<market>:<sequence>``, so a re-publish after a crash is dropped), waiting for the
   stream's acknowledgements of the whole batch;
2. the events to the sender's ``Tp-Reply`` subject, if any (the gateway's ``result``);
3. private order updates per account, and public trades and L2 deltas.

So a trader never sees a result or a fill that the events stream does not hold. A
command whose events the stream already holds (a replay after a restart) is applied and
publishes nothing. A standby applies every command too and keeps what it would have
published (``pending``) until the leader's events show up in the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from tradeplane_engine.core import AnyEvent, Engine
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.service.events import EventsPublisher, Fenced
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.service.memory import OrderMemory
from tradeplane_engine.service.metrics import MarketMetrics
from tradeplane_engine.service.tracing import trace_batch
from tradeplane_engine.wire import (
    HEADER_ORDER,
    HEADER_SEQUENCE,
    EventBatch,
    decode_command,
    encode_events,
    event_stream,
    event_subject,
    header_sequence,
)
from tradeplane_shared import telemetry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

UNREADABLE_LOOKBACK = 1000
"""Events messages without a readable ``Tp-Sequence`` stepped over at the stream's end."""

Outgoing = list[tuple[SequencedCommand, bytes, list[AnyEvent]]]
"""Applied commands with their encoded events message and their events."""


class HotPath:
    """Applies batches and publishes them while leading; keeps them pending otherwise."""

    def __init__(self, nc: Client, market: str, replica: str, engine: Engine,
                 market_data: MarketData, memory: OrderMemory, events: EventsPublisher,
                 metrics: MarketMetrics, *, leading: bool) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.market = market
        self.replica = replica
        self.engine = engine
        self.market_data = market_data
        self.memory = memory
        self.events = events
        self.metrics = metrics
        self.leading = leading
        """Only the leader publishes; a standby keeps what it applied in ``pending``."""
        self.epoch = 0
        """The lease epoch the leader publishes in (fencing)."""
        self.step_down: Callable[[], Awaitable[None]] | None = None
        """Called when the events stream fences this leader off (None: no lease to give
        up, and the fence is raised)."""
        self.published_through = 0
        """Commands up to this sequence already have their events in the events stream."""
        self.stream_last = 0
        """The events stream's last sequence as far as this replica knows (fencing)."""
        self.pending: Outgoing = []
        """Applied while standing by, events not yet seen in the events stream."""
        self.replayed = 0
        """Commands applied again at start, whose events were already published."""
        self.ready = asyncio.Event()
        """Set once the service has caught up with what was published before it started."""
        self.lock = asyncio.Lock()
        """Held while a batch is applied and published: a takeover or a handover waits
        for the batch in flight."""
        self._event_subject = event_subject(market)

    async def process(self, batch: list[SequencedCommand]) -> None:
        async with self.lock:
            await self._process(batch)

    async def _process(self, batch: list[SequencedCommand]) -> None:
        apply = self.engine.apply
        market = self.market
        outgoing: Outgoing = []
        started = time.time_ns()  # one clock for the metrics and the spans
        for command in batch:
            try:
                events = apply(decode_command(command.data, command.sequence, command.timestamp))
            except msgspec.DecodeError as exc:  # ValidationError included
                # Only a client that bypassed the gateway can put this here; the engine
                # skips it the same way on every replica and replay.
                log.warning("market %s: command %d is not a command: %s", market,
                            command.sequence, exc)
                UNTRUSTED_SKIPPED.labels("engine", "command").inc()
                events = []
            if command.sequence <= self.published_through:
                self.replayed += 1
                self.memory.remember(events)
                self.market_data.replayed(command.sequence, events)
                if command.sequence == self.published_through and not self.ready.is_set():
                    log.info("market %s: caught up at sequence %d", market, command.sequence)
                    self.ready.set()
                continue
            outgoing.append((command, encode_events(
                EventBatch(market, command.sequence, command.timestamp, events)), events))
        self.metrics.applied(len(batch), (time.time_ns() - started) / 1e9)
        if not outgoing:
            return
        if telemetry.enabled and self.leading:
            trace_batch(market, self.replica, started,
                        [(command, events) for command, _, events in outgoing])
        if not self.leading:
            self.pending.extend(outgoing)
            return
        await self.publish(outgoing)

    async def publish(self, outgoing: Outgoing) -> None:
        """Events first (fenced), then replies, private updates and market data."""
        try:
            await self.events.publish([(command.sequence, payload)
                                       for command, payload, _ in outgoing], self.stream_last,
                                      self.epoch, {command.sequence: command.trace
                                                   for command, _, _ in outgoing
                                                   if command.trace})
        except Fenced as exc:
            log.warning("market %s: fenced at epoch %d (%s)", self.market, self.epoch, exc)
            self.pending[:0] = outgoing
            if self.step_down is None:
                raise
            await self.step_down()
            return
        self.stream_last += len(outgoing)
        self.published_through = outgoing[-1][0].sequence
        self.ready.set()
        publish = self.nc.publish
        market_data = self.market_data
        for command, payload, events in outgoing:
            self.memory.remember(events)  # first: the reply may carry what it remembers
            if command.reply:
                named = self.memory.named_order(events)
                if named is None:
                    await publish(command.reply, payload)
                else:
                    await publish(command.reply, payload, headers={HEADER_ORDER: named})
            market_data.add(command.sequence, command.timestamp, events)
        for subject, message in market_data.messages():
            await publish(subject, message)

    async def on_published(self, msg: Msg) -> None:
        """What the leader stored: a standby forgets the events it no longer needs."""
        if self.leading or msg.headers is None:
            return
        sequence = header_sequence(msg.headers)
        if sequence is None:
            log.warning("market %s: an events message with Tp-Sequence %r; ignored",
                        self.market, str(msg.headers.get(HEADER_SEQUENCE))[:40])
            UNTRUSTED_SKIPPED.labels("engine", "events header").inc()
            return
        if sequence > self.published_through:
            self.published_through = sequence
        self.confirm(sequence)

    def confirm(self, sequence: int) -> None:
        """Events up to ``sequence`` are in the stream: drop them from ``pending``."""
        pending = self.pending
        if pending and pending[0][0].sequence <= sequence:
            keep = next((index for index, item in enumerate(pending)
                         if item[0].sequence > sequence), len(pending))
            for command, _, events in pending[:keep]:
                self.memory.remember(events)
                self.market_data.replayed(command.sequence, events)
            del pending[:keep]

    async def last_events_message(self) -> tuple[int, int]:
        """(stream sequence, command sequence) of the events stream's last message.

        The command sequence is the last one whose ``Tp-Sequence`` an engine could have
        written: a message after it without a readable one (someone else wrote it) is
        stepped over, looking back at most ``UNREADABLE_LOOKBACK`` messages."""
        stream = event_stream(self.market)
        try:
            message = await self.js.get_last_msg(stream, self._event_subject)
        except NotFoundError:
            return 0, 0
        last = position = message.seq or 0
        for _ in range(UNREADABLE_LOOKBACK):
            sequence = header_sequence(message.headers)
            if sequence is not None:
                return last, sequence
            log.warning("market %s: events message %d has no readable Tp-Sequence; "
                        "looking at the one before", self.market, position)
            UNTRUSTED_SKIPPED.labels("engine", "events header").inc()
            position -= 1
            if position < 1:
                break
            try:
                message = await self.js.get_msg(stream, position)
            except NotFoundError:
                break  # before the stream's first message: nothing is known published
        return last, 0
