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

RETAINED_INTERVALS = 3
"""A command stream keeps at least this many snapshot intervals of commands."""


@dataclass(frozen=True)
class StreamSettings:
    """How the streams of every market are stored. The defaults suit one nats-server."""

    replicas: int = 1
    """JetStream replicas of each stream (3 on a three-node NATS cluster)."""
    command_retention: int = 0
    """Commands a command stream keeps (0: all). An engine restarts from the newest
    snapshot and replays the commands after it, so this must cover several snapshot
    intervals: ``check`` refuses fewer than RETAINED_INTERVALS × snapshotEvery. There
    is no age limit for commands: a quiet market would lose commands no snapshot holds."""
    events_max_age_seconds: float = 0
    """Drop events messages older than this (0: keep them); the recorder must have
    written them by then (its lag is exported)."""
    max_bytes: int = -1
    """Largest size of each events stream in bytes (-1: no limit)."""
    duplicate_window_seconds: float = 120
    """How long a ``Nats-Msg-Id`` is remembered: a retry within it is applied once."""
    memory: bool = False
    """Keep the streams in memory (tests, benchmarks) instead of on disk."""

    def check(self, snapshot_every: int) -> None:
        """Refuse a command retention shorter than recovery needs."""
        needed = RETAINED_INTERVALS * snapshot_every
        if self.command_retention and self.command_retention < needed:
            raise ValueError(
                f"command retention {self.command_retention} is below {needed} commands "
                f"({RETAINED_INTERVALS} × snapshotEvery {snapshot_every}): an engine could "
                "not replay from its newest snapshot")

    def command_stream_config(self, market: str) -> StreamConfig:
        return self._config(command_stream(market), command_subject(market),
                            max_msgs=self.command_retention or -1)

    def event_stream_config(self, market: str) -> StreamConfig:
        return self._config(event_stream(market), event_subject(market),
                            max_age=self.events_max_age_seconds or None,
                            max_bytes=self.max_bytes)

    def _config(self, name: str, subject: str, *, max_msgs: int = -1,
                max_age: float | None = None, max_bytes: int = -1) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.MEMORY if self.memory else StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs=max_msgs,
            max_age=max_age,
            max_bytes=max_bytes,
            duplicate_window=self.duplicate_window_seconds,
            allow_direct=True,
        )


async def ensure_market_streams(js: JetStreamContext, market: str, settings: StreamSettings,
                                snapshot_every: int = 100_000) -> None:
    """Create (or bring up to date) the command and events streams of one market."""
    settings.check(snapshot_every)
    for config in (settings.command_stream_config(market),
                   settings.event_stream_config(market)):
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
