"""The hot path: apply each batch of commands to the core, then publish what it did.

For each batch the feed hands over, every command is applied to the pure core, then,
in this order:

1. the commands' events go to the market's events stream, consecutive commands'
   batches in one message (JetStream, message id ``<market>:<last sequence>``, so a
   re-publish after a crash is dropped), waiting for the stream's acknowledgements of
   the whole batch;
2. the events to the sender's ``Tp-Reply`` subject, if any (the gateway's ``result``):
   one message per gateway for all of the batch's commands whose subject says it takes
   them grouped (``answers.Answers``);
3. private order updates per account, and public trades and L2 deltas.

So a trader never sees a result or a fill that the events stream does not hold. A
command whose events the stream already holds (a replay after a restart) is applied and
publishes nothing. A standby applies every command too and keeps what it would have
published (``pending``) until the leader's events show up in the stream
(``replica.Replica``, which a ledger shard shares).
"""

from __future__ import annotations

import logging
import time

import msgspec
from nats.aio.client import Client

from tradeplane_engine.core import AnyEvent, Engine
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.service.answers import Answers
from tradeplane_engine.service.events import EventsPublisher
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.service.memory import OrderMemory
from tradeplane_engine.service.metrics import MarketMetrics
from tradeplane_engine.service.replica import Outgoing, Replica
from tradeplane_engine.service.tracing import trace_batch
from tradeplane_engine.wire import (
    GROUPED,
    EventBatch,
    decode_command,
    encode_events,
    event_stream,
    event_subject,
)
from tradeplane_shared import telemetry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)


class HotPath(Replica):
    """Applies batches to the market's engine; publishes them while leading."""

    def __init__(self, nc: Client, market: str, replica: str, engine: Engine,
                 market_data: MarketData, memory: OrderMemory, events: EventsPublisher,
                 metrics: MarketMetrics, *, leading: bool) -> None:
        super().__init__(nc, market, replica, events, event_stream=event_stream(market),
                         event_subject=event_subject(market), leading=leading)
        self.market = market
        self.engine = engine
        self.market_data = market_data
        self.memory = memory
        self.metrics = metrics

    async def _process(self, batch: list[SequencedCommand]) -> None:
        apply = self.engine.apply
        market = self.market
        outgoing: Outgoing = []
        started = time.time_ns()  # one clock for the metrics and the spans
        for command in batch:
            try:
                events = apply(decode_command(command.data, command.sequence, command.timestamp,
                                              command.index))
            except msgspec.DecodeError as exc:  # ValidationError included
                # Only a client that bypassed the gateway can put this here; the engine
                # skips it the same way on every replica and replay.
                log.warning("market %s: command %d is not a command: %s", market,
                            command.sequence, exc)
                UNTRUSTED_SKIPPED.labels("engine", "command").inc()
                events = []
            if command.sequence <= self.published_through:
                self.replayed_command(command, events)
                continue
            outgoing.append((command, encode_events(EventBatch(
                market, command.sequence, command.timestamp, events, command.trace,
                command.index)), events))
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

    async def after_publish(self, outgoing: Outgoing) -> None:
        """Replies, then private updates and market data."""
        publish = self.nc.publish
        market_data = self.market_data
        results = Answers(publish, GROUPED)
        for command, payload, events in outgoing:
            self.memory.remember(events)  # first: the reply may carry what it remembers
            if command.reply:
                await results.add(command.reply, payload,
                                  order=self.memory.named_order(events))
            market_data.add(command.sequence, command.timestamp, events)
        await results.send()
        for subject, message in market_data.messages():
            await publish(subject, message)

    def confirmed(self, command: SequencedCommand, events: list[AnyEvent]) -> None:
        self.memory.remember(events)
        self.market_data.replayed(command.sequence, events)
