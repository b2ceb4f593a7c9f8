"""Reads a market's stream in order, in batches, from any sequence on: the command
stream (the engine service, the snapshotter) or the events stream (the recorder).

A pull consumer with acknowledgements off (the reader's position is its own state, not
the server's) and pull requests kept in flight ahead of the reader: a new batch is
asked for when half of the last one has arrived, so messages flow without a round trip
each, and whatever has arrived is handed over at once as one batch. The feed checks
that sequences are contiguous, and rebuilds its consumer from the next sequence after a
heartbeat goes missing, after a reconnect (at once: the server may be a new one), or for
a consumer the server dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tradeplane_engine.access import GATEWAY_INBOX
from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.errors import TradeplaneEngineError
from tradeplane_engine.wire import (
    HEADER_ACK,
    HEADER_COMMANDS,
    decode_commands,
    is_subject,
    is_traceparent,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED
from tradeplane_shared.telemetry import TRACEPARENT

log = logging.getLogger(__name__)

_STATUS = "Status"
_PENDING_MESSAGES = "Nats-Pending-Messages"


class FeedError(TradeplaneEngineError):
    """The stream cannot give its reader what it needs (a gap, a purge)."""


@dataclass(frozen=True, slots=True)
class SequencedCommand:
    sequence: int
    timestamp: int
    """Nanoseconds since the epoch, when the stream stored the command."""
    data: bytes
    reply: str | None
    """Where the sender wants the command's events (the ``Tp-Reply`` header)."""
    trace: str | None = None
    """The order's W3C ``traceparent``, passed on to the command's events message."""
    ack: str | None = None
    """Where the sender wants the acknowledgement of what this command leads to (the
    ``Tp-Ack`` header a gateway puts on an order for a ledger shard)."""
    subject: str = ""
    """The subject it was published on (a ledger command's names its source)."""
    index: int = 0
    """Its place among the commands of its message (a market's command-stream message
    may hold several, ``HEADER_COMMANDS``), which share the message's sequence."""


def gateway_inbox(subject: str | None, where: str, what: str,
                  component: str = "engine") -> str | None:
    """A subject naming where to answer a command (``what``: ``reply`` or ``ack``), if it
    is a gateway's inbox; None for none. Only a client that bypassed the gateway writes
    another: the command is applied, its events are stored, no answer is sent. ``where``
    says which command, in the log line."""
    if subject is None or (is_subject(subject) and subject.startswith(f"{GATEWAY_INBOX}.")):
        return subject
    log.warning("%s has %s subject %r, not a gateway's; no answer", where, what, subject[:80])
    UNTRUSTED_SKIPPED.labels(component, f"{what} subject").inc()
    return None


def traceparent(value: str | None, where: str, component: str = "engine") -> str | None:
    """A command's W3C ``traceparent``, or None when it has none or one that is not
    one (dropped, logged and counted: it is copied on, never trusted)."""
    if value is None or is_traceparent(value):
        return value
    log.warning("%s has a traceparent that is not one; dropped", where)
    UNTRUSTED_SKIPPED.labels(component, "trace header").inc()
    return None


def delivery(reply_subject: str) -> tuple[str, int, int]:
    """The consumer that delivered a JetStream message, and the message's stream sequence
    and timestamp, from its ``$JS.ACK`` subject."""
    tokens = reply_subject.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return tokens[3], int(tokens[5]), int(tokens[7])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
    return tokens[5], int(tokens[7]), int(tokens[9])


class StreamFeed:
    """Batches of a stream's messages in sequence order, starting at ``next_sequence``."""

    def __init__(self, nc: Client, stream: str, next_sequence: int, *, batch: int = 512,
                 heartbeat: float = 1.0, expires: float = 10.0,
                 reply_header: str = "Tp-Reply", max_buffered: int | None = None,
                 on_wait: Callable[[], None] | None = None, commands: bool = False,
                 ) -> None:
        self._nc = nc
        self._stream = stream
        self.next_sequence = next_sequence
        self._batch = batch
        self._max_buffered = max_buffered or 8 * batch
        """Stop asking for more while this many wait for a slow consumer."""
        self._heartbeat = heartbeat
        self._expires = expires
        self._reply_header = reply_header
        self._on_wait = on_wait
        """Called each time ``next_batch`` has waited a heartbeat (or less) for commands:
        the reader is idle, not stuck."""
        self._commands = commands
        """A market's command stream: a message may hold several commands."""
        self._arrived: list[SequencedCommand] = []
        self._wakeup = asyncio.Event()
        self._outstanding = 0
        self._consumer: str | None = None
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._last_heard = 0.0
        self._broken = False
        self._ahead = 0
        """A sequence the consumer delivered past the one expected (0: none)."""
        self._failure: FeedError | None = None
        self._reconnects = nc.stats["reconnects"]
        """The connection's reconnect count when the consumer was made: after a reconnect
        the consumer may be gone with the server that held it, so it is made again."""

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        await self._create_consumer()

    async def stop(self) -> None:
        """Unsubscribe and delete the consumer; never raises for NATS being gone (a stop
        in a ``finally`` must not replace what ended the reader, a cancellation above
        all)."""
        if self._sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._sub.unsubscribe()
            self._sub = None
        await self._delete_consumer()

    async def next_batch(self) -> list[SequencedCommand]:
        """Every command that has arrived, waiting for at least one."""
        loop = asyncio.get_running_loop()
        while not self._arrived:
            if self._failure is not None:
                raise self._failure
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._heartbeat)
            if self._on_wait is not None:
                self._on_wait()
            reconnects = self._nc.stats["reconnects"]
            why = ("reconnected" if reconnects != self._reconnects
                   else "broken" if self._broken
                   else "quiet" if loop.time() - self._last_heard > 3 * self._heartbeat
                   else None)
            if why is not None:
                log.warning("command feed of %s %s; rebuilding its consumer at %d",
                            self._stream, why, self.next_sequence)
                self._reconnects = reconnects
                try:
                    if self._ahead:
                        await self._check_held()
                    await self._create_consumer()
                except NATS_ERRORS as exc:  # NATS away: try again at the next heartbeat
                    log.warning("command feed of %s: no consumer yet (%s: %s)", self._stream,
                                type(exc).__name__, exc)
                    self._broken = True
        batch, self._arrived = self._arrived, []
        if self._outstanding <= self._batch // 2 and self._consumer is not None:
            self._last_heard = loop.time()
            await self._pull()
        return batch

    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        headers = msg.headers
        if not msg.reply or (headers and _STATUS in headers and not msg.data):
            await self._on_status(msg)
            return
        consumer, sequence, timestamp = delivery(msg.reply)
        if consumer != self._consumer:
            return  # a consumer made before the current one: its pulls outlive it
        self._outstanding -= 1
        if sequence < self.next_sequence:
            return  # delivered again after the consumer was rebuilt
        if sequence > self.next_sequence:
            # The consumer skipped ahead: the stream may have lost what comes next, or
            # the consumer its place (a NATS node lost under it). ``next_batch`` asks
            # the stream which, and makes a consumer again or stops.
            if not self._ahead:
                log.warning("command feed of %s: expected sequence %d, got %d",
                            self._stream, self.next_sequence, sequence)
            self._ahead = sequence
            self._broken = True
            self._wakeup.set()
            return
        self.next_sequence = sequence + 1
        if headers and self._commands and HEADER_COMMANDS in headers:
            self._arrived.extend(self._commands_of(msg, sequence, timestamp))
        elif headers:
            reply = self._gateway_inbox(headers.get(self._reply_header), sequence, "reply")
            ack = self._gateway_inbox(headers.get(HEADER_ACK), sequence, "ack")
            trace = traceparent(headers.get(TRACEPARENT), f"{self._stream}: command {sequence}")
            self._arrived.append(SequencedCommand(
                sequence, timestamp, msg.data, reply, trace, ack, msg.subject))
        else:
            self._arrived.append(SequencedCommand(sequence, timestamp, msg.data, None,
                                                  subject=msg.subject))
        self._wakeup.set()
        if self._outstanding <= self._batch // 2 and len(self._arrived) < self._max_buffered:
            await self._pull()

    def _commands_of(self, msg: Msg, sequence: int, timestamp: int) -> list[SequencedCommand]:
        """The commands of a message of several, each with its index and its own answer
        subject and trace (checked as headers are). A message that is not one is handed
        over as it is, one command that does not decode: skipped by every replica alike."""
        where = f"{self._stream}: command {sequence}"
        try:
            entries = decode_commands(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("%s is not a message of commands: %s", where, str(exc)[:200])
            UNTRUSTED_SKIPPED.labels("engine", "commands message").inc()
            return [SequencedCommand(sequence, timestamp, msg.data, None, subject=msg.subject)]
        return [SequencedCommand(
            sequence, timestamp, bytes(entry.command),
            gateway_inbox(entry.reply or None, f"{where}.{index}", "reply"),
            traceparent(entry.trace or None, f"{where}.{index}"), None, msg.subject, index)
            for index, entry in enumerate(entries)]

    async def _check_held(self) -> None:
        """After the consumer skipped ahead: ``FeedError`` if the stream no longer holds
        the next sequence (its retention or a purge took it), which no new consumer can
        give; else nothing, and the consumer is made again from there."""
        info = await self._nc.jetstream().stream_info(self._stream)
        if info.state.first_seq > self.next_sequence:
            self._failure = FeedError(
                f"{self._stream}: expected sequence {self.next_sequence}, got {self._ahead}; "
                f"the stream starts at {info.state.first_seq}: it no longer holds what the "
                "engine needs")
            raise self._failure
        self._ahead = 0

    def _gateway_inbox(self, subject: str | None, sequence: int, what: str) -> str | None:
        return gateway_inbox(subject, f"{self._stream}: command {sequence}", what)

    async def _on_status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat
            return
        if status in ("404", "408"):  # a pull request ran out (no messages, expired)
            self._outstanding -= int(headers.get(_PENDING_MESSAGES, "0") or 0)
            if self._outstanding <= self._batch // 2 and len(self._arrived) < self._max_buffered:
                await self._pull()
            return
        log.warning("command feed of %s: status %s %s", self._stream, status,
                    headers.get("Description", ""))
        self._broken = True  # 409: consumer deleted, leadership change, ...
        self._wakeup.set()

    async def _pull(self) -> None:
        if self._consumer is None:
            return  # between consumers; the new one pulls when it is made
        request = {"batch": self._batch, "expires": int(self._expires * 1e9),
                   "idle_heartbeat": int(self._heartbeat * 1e9)}
        self._outstanding += self._batch
        await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}",
                               json.dumps(request).encode(), reply=self._inbox)

    async def _create_consumer(self) -> None:
        await self._delete_consumer()
        js = self._nc.jetstream()
        info = await js.add_consumer(self._stream, ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_sequence,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(30.0, 3 * self._expires),
            mem_storage=True,
            num_replicas=1,
        ))
        self._consumer = info.name
        self._outstanding = 0
        self._broken = False
        self._last_heard = asyncio.get_running_loop().time()
        await self._pull()

    async def _delete_consumer(self) -> None:
        if self._consumer is None or self._nc.is_closed:
            return
        name, self._consumer = self._consumer, None
        try:
            await self._nc.jetstream().delete_consumer(self._stream, name)
        except Exception as exc:
            log.debug("could not delete consumer %s of %s: %s", name, self._stream, exc)
