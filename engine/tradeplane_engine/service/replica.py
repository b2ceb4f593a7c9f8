"""A replica of a sequenced state machine: what a market's engine and a ledger shard
share.

Each replica applies every command of its command stream to a pure core, in order.
Only the leader publishes what the commands did to its events stream, and it does so
fenced (``EventsPublisher``: ``Nats-Expected-Last-Sequence``, message ids derived from
the command's sequence). A standby keeps what it applied (``pending``) until the
leader's events show up in the stream, so whichever replica takes the lead publishes
from exactly where the stream ends (``leadership.Leadership``).

A subclass says how a batch is applied (``process``) and what follows once its events
are stored (``after_publish``); this class holds the publishing, the confirmation and
the takeover's reading of the stream's end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.service.events import EventsPublisher, Fenced
from tradeplane_engine.wire import (
    GROUPED_BYTES,
    HEADER_SEQUENCE,
    header_sequence,
    join_batches,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

UNREADABLE_LOOKBACK = 1000
"""Events messages without a readable ``Tp-Sequence`` stepped over at the stream's end."""

type Outgoing = list[tuple[SequencedCommand, bytes, Any]]
"""Applied commands with their encoded batch of events and their events."""


def in_groups[T](items: Iterable[T], size: Callable[[T], int], limit: int,
                 ends: Callable[[T], bool] | None = None,
                 joined: Callable[[T, T], bool] | None = None) -> list[list[T]]:
    """Consecutive items in as few groups as keep each group's ``size`` under ``limit``
    (an item larger than that alone); an item for which ``ends`` says so ends its group,
    and one that ``joined`` says belongs with the item before it is never split from it
    by the limit."""
    groups: list[list[T]] = []
    group: list[T] = []
    total = 0
    for item in items:
        length = size(item)
        if group and total + length > limit and not (joined and joined(group[-1], item)):
            groups.append(group)
            group, total = [], 0
        group.append(item)
        total += length
        if ends is not None and ends(item):
            groups.append(group)
            group, total = [], 0
    if group:
        groups.append(group)
    return groups


def _same_message(before: tuple[SequencedCommand, bytes, Any],
                  item: tuple[SequencedCommand, bytes, Any]) -> bool:
    """Two applied commands of one command-stream message (one sequence)."""
    return before[0].sequence == item[0].sequence


def grouped_messages(outgoing: Outgoing, limit: int = GROUPED_BYTES,
                     ends: Callable[[tuple[SequencedCommand, bytes, Any]], bool] | None = None,
                     ) -> list[tuple[int, bytes]]:
    """Applied commands' batches in as few events messages as keep each under ``limit``
    bytes, each a JSON array of consecutive commands' batches with the sequence of its
    last command (``Tp-Sequence``, and its message id). A command for which ``ends`` says
    so ends its message. The commands of one command-stream message (one sequence) stay
    in one events message: the sequence names it, and is settled and replayed whole."""
    return [(group[-1][0].sequence, join_batches([payload for _, payload, _ in group]))
            for group in in_groups(outgoing, lambda item: len(item[1]), limit, ends,
                                   _same_message)]


class Replica:
    """Publishes applied batches while leading; keeps them pending otherwise."""

    component = "engine"
    """Who this is, in the untrusted-input metric's labels."""

    def __init__(self, nc: Client, name: str, replica: str, events: EventsPublisher, *,
                 event_stream: str, event_subject: str, leading: bool) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.name = name
        """What is replicated: a market's name, or a ledger shard's (``ledger.<n>``)."""
        self.replica = replica
        self.events = events
        self.event_stream = event_stream
        self.event_subject = event_subject
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
        """Set once the replica has caught up with what was published before it started."""
        self.lock = asyncio.Lock()
        """Held while a batch is applied and published: a takeover or a handover waits
        for the batch in flight."""

    async def process(self, batch: list[SequencedCommand]) -> None:
        async with self.lock:
            await self._process(batch)

    async def _process(self, batch: list[SequencedCommand]) -> None:
        raise NotImplementedError

    async def after_publish(self, outgoing: Outgoing) -> None:
        """What follows once the batch's events are stored: replies, updates, forwards."""
        raise NotImplementedError

    def messages(self, outgoing: Outgoing) -> list[tuple[int, bytes]]:
        """The events messages of applied commands (``grouped_messages``)."""
        return grouped_messages(outgoing)

    def confirmed(self, command: SequencedCommand, events: Any) -> None:
        """A command applied while standing by whose events the leader stored."""

    def replayed_command(self, command: SequencedCommand, events: Any) -> None:
        """A command applied again at start: count it, and mark the catch-up."""
        self.replayed += 1
        self.confirmed(command, events)
        if command.sequence == self.published_through and not self.ready.is_set():
            log.info("%s: caught up at sequence %d", self.name, command.sequence)
            self.ready.set()

    async def publish(self, outgoing: Outgoing) -> None:
        """Events first (fenced), then what follows them (``after_publish``)."""
        messages = self.messages(outgoing)
        try:
            await self.events.publish(messages, self.stream_last, self.epoch)
        except Fenced as exc:
            log.warning("%s: fenced at epoch %d (%s)", self.name, self.epoch, exc)
            self.pending[:0] = outgoing
            if self.step_down is None:
                raise
            await self.step_down()
            return
        self.stream_last += len(messages)
        self.published_through = outgoing[-1][0].sequence
        self.ready.set()
        await self.after_publish(outgoing)

    async def on_published(self, msg: Msg) -> None:
        """What the leader stored: a standby forgets the events it no longer needs."""
        if self.leading or msg.headers is None:
            return
        sequence = header_sequence(msg.headers)
        if sequence is None:
            log.warning("%s: an events message with Tp-Sequence %r; ignored", self.name,
                        str(msg.headers.get(HEADER_SEQUENCE))[:40])
            UNTRUSTED_SKIPPED.labels(self.component, "events header").inc()
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
                self.confirmed(command, events)
            del pending[:keep]

    async def last_events_message(self) -> tuple[int, int]:
        """(stream sequence, command sequence) of the events stream's last message.

        The command sequence is the last one whose ``Tp-Sequence`` a replica could have
        written: a message after it without a readable one (someone else wrote it) is
        stepped over, looking back at most ``UNREADABLE_LOOKBACK`` messages."""
        try:
            message = await self.js.get_last_msg(self.event_stream, self.event_subject)
        except NotFoundError:
            return 0, 0
        last = position = message.seq or 0
        for _ in range(UNREADABLE_LOOKBACK):
            sequence = header_sequence(message.headers)
            if sequence is not None:
                return last, sequence
            log.warning("%s: events message %d has no readable Tp-Sequence; looking at "
                        "the one before", self.name, position)
            UNTRUSTED_SKIPPED.labels(self.component, "events header").inc()
            position -= 1
            if position < 1:
                break
            try:
                message = await self.js.get_msg(self.event_stream, position)
            except NotFoundError:
                break  # before the stream's first message: nothing is known published
        return last, 0
