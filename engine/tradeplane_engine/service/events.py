"""Publishes applied commands' events to the market's events stream, a batch at a time.

Each message covers consecutive commands (``replica.grouped_messages``). Every message
goes out at once with its own reply subject; the batch is done when the stream has
acknowledged every one of them. Each message carries ``Nats-Msg-Id``
``<market>:<sequence>`` (its last command's), so when acknowledgements do not come in
time the missing ones are simply sent again: the stream stores each at most once. So
are those the stream could not take for now (it has no leader, or JetStream is not
available): that is not a refusal, and the engine waits it out. An
acknowledgement that says ``duplicate`` is checked against what the stream holds
(``Forged``): it is either this message sent before, or another leader's for the same
commands — the same bytes when it grouped them alike, events being deterministic — or a
message someone else published under the id first, which would make the stream drop
the real events silently. Bytes that differ make the leader stop leading, as when
fenced. This is nats-py's ``publish_async`` without its per-message semaphore, task and
JSON parsing, which cost more than the matching itself."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.errors import TradeplaneEngineError
from tradeplane_engine.wire import (
    HEADER_EPOCH,
    HEADER_MESSAGE_ID,
    HEADER_SEQUENCE,
    PubAck,
    decode_pub_ack,
    event_stream,
    event_subject,
    stream_unavailable,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"


class PublishError(TradeplaneEngineError):
    """The events stream refused a message (not a timeout: those are retried)."""


class Fenced(PublishError):  # noqa: N818 - what happened to us, not an error of ours
    """The events stream moved on without us: another replica leads now."""


class Forged(Fenced):
    """The stream holds, under one of our message ids, a message no engine wrote: the
    command's real events are lost. The leader stops leading, as when fenced."""


WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code when ``Nats-Expected-Last-Sequence`` does not match."""


class EventsPublisher:
    def __init__(self, nc: Client, market: str, *, ack_timeout: float = 2.0,
                 stream: str | None = None, subject: str | None = None) -> None:
        self.nc = nc
        self.market = market
        """A market's name, or another replicated state's (a ledger shard's)."""
        self.ack_timeout = ack_timeout
        self._stream = stream or event_stream(market)
        self._subject = subject or event_subject(market)
        self._inbox = nc.new_inbox()
        self._waiting: set[int] = set()
        self._duplicates: dict[int, int] = {}
        """Command sequence -> stream sequence of a message acknowledged as a duplicate."""
        self._done: asyncio.Future[None] | None = None
        self._unavailable: str | None = None
        """Why the stream could not take a message of this attempt, if it said."""
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, batch: list[tuple[int, bytes]], after: int, epoch: int = 0) -> None:
        """Store every (sequence, payload) of the batch in the events stream: each payload
        is an events message, and ``sequence`` the last command it covers.

        ``after`` is the stream's last sequence as this leader knows it: each message
        carries ``Nats-Expected-Last-Sequence``, so if anyone else wrote to the stream
        since, the stream refuses and ``Fenced`` is raised (data-plane fencing).
        """
        expected = {sequence: after + index for index, (sequence, _) in enumerate(batch)}
        payloads = pending = dict(batch)
        self._duplicates = {}
        attempt = 0
        while pending:
            self._waiting = set(pending)
            self._done = asyncio.get_running_loop().create_future()
            for sequence, payload in pending.items():
                number = str(sequence)
                headers = {HEADER_MESSAGE_ID: f"{self.market}:{number}",
                           HEADER_SEQUENCE: number, HEADER_EPOCH: str(epoch),
                           EXPECTED_LAST_SEQUENCE: str(expected[sequence])}
                await self.nc.publish(self._subject, payload, reply=f"{self._inbox}.{number}",
                                      headers=headers)
            try:
                await asyncio.wait_for(asyncio.shield(self._done), self.ack_timeout)
                await self._check_duplicates(payloads)
                return
            except TimeoutError:
                attempt += 1
                pending = {sequence: pending[sequence] for sequence in self._waiting}
                why = f" ({self._unavailable})" if self._unavailable else ""
                self._unavailable = None
                log.warning("market %s: %d events messages not acknowledged in %.1f s%s "
                            "(attempt %d); sending them again", self.market, len(pending),
                            self.ack_timeout, why, attempt)

    async def _check_duplicates(self, payloads: dict[int, bytes]) -> None:
        """Raise ``Forged`` if a message acknowledged as a duplicate is not ours.

        Duplicates come only from retries and takeovers, so this read is rare. When it
        cannot be made (NATS away), the duplicate is taken as ours, as it was before."""
        for sequence, stream_sequence in self._duplicates.items():
            try:
                stored = await self.nc.jetstream().get_msg(self._stream,
                                                            stream_sequence)
            except NATS_ERRORS as exc:
                log.warning("market %s: events message %d acknowledged as a duplicate; "
                            "not checked (%s)", self.market, sequence, type(exc).__name__)
                continue
            if stored.data != payloads[sequence]:
                UNTRUSTED_SKIPPED.labels("engine", "forged events message").inc()
                raise Forged(
                    f"events stream of {self.market} holds message {stream_sequence} under "
                    f"the id of command {sequence}'s events, and it is not them")

    async def _on_ack(self, msg: Msg) -> None:
        sequence = int(msg.subject.rpartition(".")[2])
        if sequence not in self._waiting or self._done is None or self._done.done():
            return
        unavailable = stream_unavailable(msg.data, msg.headers)
        if unavailable is not None:
            self._unavailable = unavailable  # sent again when the wait runs out
            return
        ack = decode_pub_ack(msg.data) if msg.data else PubAck(error={"description": "no data"})
        if ack.error is not None:
            kind = Fenced if ack.error.get("err_code") == WRONG_LAST_SEQUENCE else PublishError
            self._done.set_exception(kind(
                f"events stream of {self.market} refused sequence {sequence}: {ack.error}"))
            return
        if ack.duplicate:
            self._duplicates[sequence] = ack.seq
        self._waiting.discard(sequence)
        if not self._waiting:
            self._done.set_result(None)
