"""The JetStream streams and the key-value bucket a market lives on, created idempotently,
and a market's definition as read from that bucket.

The engine service and the recorder both need them; they live here, beside
``connection``, so that neither of those packages imports the other.

Replication and retention are settings, not code: one replica on a single nats-server,
three on a NATS cluster. Every process that needs a stream ensures it exists with the
same configuration, so start-up order does not matter.

A command stream also records, in its own metadata, the trading mode its market started
in (``INITIAL_MODE_KEY``). The market's definition in the markets bucket says the mode
the market should be in *now*; once an admin ``SetTradingMode`` has been sequenced the
two differ, and a replay from the first command must start in the mode the first
command met, or it would not reproduce what was published. So the mode is written once,
when the stream is created, and never changed by later updates of the stream's
configuration; ``replay_spec`` reads it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.core.market import MarketSpec, TradingMode
from tradeplane_engine.wire import (
    MARKETS_BUCKET,
    MarketDefinition,
    command_stream,
    command_subject,
    definition_entry,
    event_stream,
    event_subject,
    ledger_command_stream,
    ledger_command_subject,
    ledger_event_stream,
    ledger_event_subject,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

RETAINED_INTERVALS = 3
"""A command stream keeps at least this many snapshot intervals of commands."""

INITIAL_MODE_KEY = "tradeplane.dev/initial-trading-mode"
"""Command-stream metadata: the trading mode the market's first command met."""


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

    def command_stream_config(self, market: str,
                              initial_mode: TradingMode | None = None) -> StreamConfig:
        """The command stream's configuration; with ``initial_mode``, its metadata records
        the mode a replay from the first command starts in."""
        config = self._config(command_stream(market), command_subject(market),
                              max_msgs=self.command_retention or -1)
        if initial_mode is not None:
            config.metadata = {INITIAL_MODE_KEY: initial_mode.value}
        return config

    def event_stream_config(self, market: str) -> StreamConfig:
        return self._config(event_stream(market), event_subject(market),
                            max_age=self.events_max_age_seconds or None,
                            max_bytes=self.max_bytes)

    def ledger_stream_configs(self, shard: int) -> list[StreamConfig]:
        """A ledger shard's command and events streams (docs/ledger.md): kept whole, as
        the shard replays its commands from the first (or its newest snapshot)."""
        return [self._config(ledger_command_stream(shard),
                             ledger_command_subject(shard, "*")),
                self._config(ledger_event_stream(shard), ledger_event_subject(shard))]

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


async def ensure_market_streams(js: JetStreamContext, definition: MarketDefinition,
                                settings: StreamSettings) -> None:
    """Create (or bring up to date) the command and events streams of one market.

    A new command stream records the definition's trading mode as the market's initial
    mode. An existing one keeps whatever initial mode it recorded: the definition's mode
    may have changed since (by a sequenced ``SetTradingMode``), and the first command was
    applied in the old one. Only a stream that has never held a command and recorded no
    mode (made before the mode was recorded) gets the definition's, which is then
    certainly the mode its first command will meet.
    """
    settings.check(definition.snapshot_every)
    market = definition.name
    for config in (settings.command_stream_config(market, definition.trading_mode),
                   settings.event_stream_config(market)):
        await ensure_stream(js, config)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create a stream, or bring an existing one up to ``config`` (keeping the metadata
    it recorded, see ``_kept_metadata``)."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # another process created it first
            info = await js.stream_info(config.name)
    config.metadata = _kept_metadata(config.metadata, info)
    try:
        await js.update_stream(config)
    except APIError as exc:  # storage type and a few more can never change
        log.warning("stream %s keeps its configuration; %s", config.name, exc.description)


def _kept_metadata(wanted: dict[str, str] | None, info: StreamInfo) -> dict[str, str] | None:
    """The metadata an update of an existing stream sets: what the stream has, with the
    initial mode it recorded (if any) winning over the one ``wanted`` proposes.

    Keys under ``_nats.`` belong to the server, which sets them itself on every update.
    """
    current = {key: value for key, value in (info.config.metadata or {}).items()
               if not key.startswith("_nats.")}
    proposed = (wanted or {}).get(INITIAL_MODE_KEY)
    if INITIAL_MODE_KEY not in current and proposed is not None and not info.state.last_seq:
        current[INITIAL_MODE_KEY] = proposed
    return current or None


async def initial_trading_mode(js: JetStreamContext, market: str) -> TradingMode | None:
    """The trading mode the market's command stream recorded at its creation; None for a
    stream made before the mode was recorded. NotFoundError if there is no stream."""
    info = await js.stream_info(command_stream(market))
    recorded = (info.config.metadata or {}).get(INITIAL_MODE_KEY)
    if recorded is None:
        return None
    try:
        return TradingMode(recorded)
    except ValueError:
        # Guessing would let a replay diverge from what was published; refuse instead.
        raise ValueError(f"{command_stream(market)}: metadata {INITIAL_MODE_KEY} is "
                         f"{recorded!r}, not a trading mode") from None


async def replay_spec(js: JetStreamContext, definition: MarketDefinition) -> MarketSpec:
    """The spec an engine replaying the market's command stream from its first command
    starts from: the definition's, in the trading mode the stream recorded at its creation
    rather than the mode the definition says now (which later ``SetTradingMode`` commands
    in the stream may have set). A stream that recorded no mode (one made before the mode
    was recorded) falls back to the definition's, with a warning: a replay is right only
    if the mode has not changed since the stream's first command.
    """
    spec = definition.spec()
    mode = await initial_trading_mode(js, definition.name)
    if mode is None:
        log.warning("%s records no initial trading mode; replaying from the definition's "
                    "mode %s", command_stream(definition.name), spec.trading_mode.value)
        return spec
    return msgspec.structs.replace(spec, trading_mode=mode)


async def markets_bucket(js: JetStreamContext, settings: StreamSettings) -> KeyValue:
    """The key-value bucket of market definitions, created if it does not exist."""
    try:
        return await js.key_value(MARKETS_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(KeyValueConfig(
            bucket=MARKETS_BUCKET, history=5, replicas=settings.replicas,
            storage=StorageType.MEMORY if settings.memory else StorageType.FILE,
        ))


async def market_definition(kv: KeyValue, market: str,
                            component: str = "engine") -> MarketDefinition:
    """The market's definition from the bucket, waiting for it to be written.

    A value that is not a definition of ``market`` is skipped (logged, and counted for
    ``component``), and the wait goes on for one that is."""
    watcher = await kv.watch(market)
    try:
        async for entry in watcher:
            if entry is not None and entry.value:
                try:
                    return definition_entry(market, entry.value)
                except ValueError as exc:
                    log.error("market %s: definition refused (%s); waiting for a valid one",
                              market, str(exc)[:200])
                    UNTRUSTED_SKIPPED.labels(component, "market definition").inc()
                    continue
            log.info("waiting for market %s to be defined in the markets bucket", market)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    raise RuntimeError(f"watch of market {market} ended")  # pragma: no cover
