"""The markets a gateway knows, kept current from the markets key-value bucket.

A market written to the bucket (by ``tradeplane up`` or the operator) is served from
the next request on; a changed definition replaces the old one; no restart. A value
that is not a definition of the market its key names (whoever wrote it) is skipped with
a log line and counted; the market keeps its last good definition, or stays unknown.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec
from nats.js.kv import KeyValue

from tradeplane_engine.core.market import MarketSpec
from tradeplane_engine.wire import MarketDefinition, PublicFormatter, definition_entry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KnownMarket:
    definition: MarketDefinition
    spec: MarketSpec
    formatter: PublicFormatter


class MarketDirectory:
    def __init__(self) -> None:
        self._markets: dict[str, KnownMarket] = {}
        self._changed = asyncio.Condition()

    def get(self, name: str) -> KnownMarket | None:
        return self._markets.get(name)

    async def wait_for(self, name: str, timeout: float = 10.0) -> KnownMarket:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: name in self._markets),
                                   timeout)
        return self._markets[name]

    async def follow(self, kv: KeyValue) -> None:
        """Apply every change of the bucket, for ever."""
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                await self.apply(entry.key, entry.value, entry.operation)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        """One change of the markets bucket: a definition put, or a market removed."""
        async with self._changed:
            if operation in ("DEL", "PURGE") or not value:
                if self._markets.pop(key, None) is not None:
                    log.info("market %s removed", key)
            else:
                try:
                    definition = definition_entry(key, value)
                    spec = definition.spec()
                    known = KnownMarket(definition, spec, PublicFormatter(spec))
                except (msgspec.MsgspecError, ValueError, ArithmeticError) as exc:
                    log.error("market %s: definition refused, the last good one stays: %s",
                              key[:80], str(exc)[:200])
                    UNTRUSTED_SKIPPED.labels("gateway", "market definition").inc()
                    return
                self._markets[key] = known
                log.info("market %s: %s tick %s lot %s", key, spec.symbol, spec.tick_size,
                         spec.lot_size)
            self._changed.notify_all()
