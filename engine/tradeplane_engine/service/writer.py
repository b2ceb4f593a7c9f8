"""Publishes batches of messages to JetStream streams and waits for every acknowledgement.

Every message goes out at once with its own reply subject; a message not acknowledged
in time is sent again, under its ``Nats-Msg-Id``, so its stream stores it once; so is
one its stream could not take for now (no leader, JetStream not available), which is no
answer: the writer waits until the stream can take it, unless the stream no longer
exists (a market deleted), which is answered as JetStream answers a missing stream.
What a ledger shard's leader writes to other streams goes through here: the orders it
funded, to their markets' command streams, and settlements, to its own command stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.wire import HEADER_MESSAGE_ID, stream_unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outbound:
    subject: str
    payload: bytes
    headers: dict[str, str]
    """``Nats-Msg-Id`` among them: a resend must be stored once."""
    stream: str
    """The stream that takes ``subject``: whether it still exists is asked when it
    cannot take the message."""


NO_STREAM = b'{"error":{"code":404,"err_code":10059,"description":"stream not found"}}'
"""The answer for a message whose stream does not exist: JetStream's own."""


class StreamWriter:
    """Writes batches; ``write`` returns each message's acknowledgement, in order."""

    def __init__(self, nc: Client, name: str, *, ack_timeout: float = 2.0) -> None:
        self.nc = nc
        self.name = name
        self.ack_timeout = ack_timeout
        self._inbox = nc.new_inbox()
        self._next = 0
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._sub: Subscription | None = None
        self._unavailable: dict[int, str] = {}
        """Why a stream could not take a message of this attempt, where it said, by the
        message's token."""

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for waiting in self._waiting.values():
            waiting.cancel()
        self._waiting.clear()

    async def write(self, messages: list[Outbound]) -> list[bytes]:
        """Store every message; wait, resending what is not acknowledged in time, until
        each has its acknowledgement (an error from its stream included; its stream not
        able to take it for now is no answer)."""
        assert all(HEADER_MESSAGE_ID in message.headers for message in messages)
        loop = asyncio.get_running_loop()
        acks: list[bytes | None] = [None] * len(messages)
        pending = list(range(len(messages)))
        attempt = 0
        while pending:
            futures: dict[int, asyncio.Future[bytes]] = {}
            tokens: dict[int, int] = {}
            for index in pending:
                self._next += 1
                token = tokens[index] = self._next
                futures[index] = self._waiting[token] = loop.create_future()
                message = messages[index]
                await self.nc.publish(message.subject, message.payload,
                                      reply=f"{self._inbox}.{token}", headers=message.headers)
            done, _ = await asyncio.wait(futures.values(), timeout=self.ack_timeout)
            for index, future in futures.items():
                if future in done:
                    acks[index] = future.result()
                else:
                    future.cancel()
            self._waiting = {token: future for token, future in self._waiting.items()
                             if not future.done()}
            # Why a message is not taken, where its stream said (no leader, ...).
            said = {index: why for index, token in tokens.items()
                    if (why := self._unavailable.pop(token, None)) is not None}
            pending = [index for index in pending if acks[index] is None]
            if said:
                gone = await self._gone({messages[index].stream for index in said})
                for index in pending:
                    if messages[index].stream in gone:
                        acks[index] = NO_STREAM
                pending = [index for index in pending if acks[index] is None]
            if pending:
                attempt += 1
                reasons = sorted({said[index] for index in pending if index in said})
                why = f" ({'; '.join(reasons)})" if reasons else ""
                log.warning("%s: %d messages not acknowledged in %.1f s%s (attempt %d); "
                            "sending them again", self.name, len(pending), self.ack_timeout,
                            why, attempt)
        return [ack for ack in acks if ack is not None]

    async def _gone(self, streams: set[str]) -> set[str]:
        """Which of ``streams`` JetStream says do not exist; one it cannot say of (NATS
        or JetStream away) is taken to exist, and waited for."""
        js = self.nc.jetstream()
        gone: set[str] = set()
        for stream in sorted(streams):
            try:
                await js.stream_info(stream)
            except NotFoundError:
                log.warning("%s: stream %s does not exist; its messages are answered "
                            "as JetStream answers them", self.name, stream)
                gone.add(stream)
            except NATS_ERRORS:
                pass
        return gone

    async def _on_ack(self, msg: Msg) -> None:
        token = int(msg.subject.rpartition(".")[2])
        unavailable = stream_unavailable(msg.data, msg.headers)
        if unavailable is not None:
            if token in self._waiting:  # no answer yet: sent again when time is up
                self._unavailable[token] = unavailable
            return
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_result(msg.data)
