"""The markets a gateway knows, kept current from the markets key-value bucket.

A market written to the bucket (by ``tradeplane up`` or the operator) is served from
the next request on; a changed definition replaces the old one; no restart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec
from nats.js.kv import KeyValue

from tradeplane_engine.core.market import MarketSpec
from tradeplane_engine.wire import MarketDefinition, PublicFormatter, decode_definition

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
                await self._apply(entry.key, entry.value, entry.operation)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        async with self._changed:
            if operation in ("DEL", "PURGE") or not value:
                if self._markets.pop(key, None) is not None:
                    log.info("market %s removed", key)
            else:
                try:
                    definition = decode_definition(value)
                except (msgspec.MsgspecError, ValueError) as exc:
                    log.error("market %s: definition refused: %s", key, exc)
                    return
                spec = definition.spec()
                self._markets[key] = KnownMarket(definition, spec, PublicFormatter(spec))
                log.info("market %s: %s tick %s lot %s", key, spec.symbol, spec.tick_size,
                         spec.lot_size)
            self._changed.notify_all()
