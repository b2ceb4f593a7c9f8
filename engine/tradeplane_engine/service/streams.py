"""The JetStream streams and the key-value bucket a market lives on, created idempotently.

Replication and retention are settings, not code: one replica on a single nats-server,
three on a NATS cluster. Every process that needs a stream ensures it exists with the
same configuration, so start-up order does not matter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.wire import (
    MARKETS_BUCKET,
    command_stream,
    command_subject,
    event_stream,
    event_subject,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """How the streams of every market are stored. The defaults suit one nats-server."""

    replicas: int = 1
    """JetStream replicas of each stream (3 on a three-node NATS cluster)."""
    max_age_seconds: float = 0
    """Drop messages older than this (0: keep them). Engines rebuild from the command
    stream, so it must reach back to the newest snapshot (see docs/protocol.md)."""
    max_bytes: int = -1
    """Largest size of each stream in bytes (-1: no limit)."""
    duplicate_window_seconds: float = 120
    """How long a ``Nats-Msg-Id`` is remembered: a retry within it is applied once."""
    memory: bool = False
    """Keep the streams in memory (tests, benchmarks) instead of on disk."""

    def stream_config(self, name: str, subject: str) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.MEMORY if self.memory else StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.max_age_seconds or None,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_seconds,
            allow_direct=True,
        )


async def ensure_market_streams(js: JetStreamContext, market: str,
                                settings: StreamSettings) -> None:
    """Create (or bring up to date) the command and events streams of one market."""
    for config in (settings.stream_config(command_stream(market), command_subject(market)),
                   settings.stream_config(event_stream(market), event_subject(market))):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:  # another process created it first
                pass
        try:
            await js.update_stream(config)
        except APIError as exc:  # storage type and a few more can never change
            log.warning("stream %s keeps its configuration; %s", config.name, exc.description)


async def markets_bucket(js: JetStreamContext, settings: StreamSettings) -> KeyValue:
    """The key-value bucket of market definitions, created if it does not exist."""
    try:
        return await js.key_value(MARKETS_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(KeyValueConfig(
            bucket=MARKETS_BUCKET, history=5, replicas=settings.replicas,
            storage=StorageType.MEMORY if settings.memory else StorageType.FILE,
        ))
