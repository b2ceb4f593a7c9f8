"""A whole exchange inside the test process, on a real nats-server started for the test.

The engine services and the gateway run as asyncio tasks beside the test's clients, so
a test sees every component's real behaviour over real NATS, with no processes to
leak. ``tradeplane up`` (a separate test) covers the same pieces as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats
from nats.aio.client import Client as NatsClient

from tradeplane.processes import NatsServer
from tradeplane_engine.service import MarketService, StreamSettings, markets_bucket
from tradeplane_engine.wire import MarketDefinition, encode_definition
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.service import Gateway

T = TypeVar("T")

SOL = MarketDefinition(name="sol-usdt", base="SOL", quote="USDT", tick_size="0.01",
                       lot_size="0.01", min_notional="1", price_band="10",
                       reference_price="100")
BTC = MarketDefinition(name="btc-usdt", base="BTC", quote="USDT", tick_size="0.1",
                       lot_size="0.0001", min_notional="5")

SETTINGS = StreamSettings(memory=True)


def run[T](coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test's coroutine with a deadline, so a hang fails instead of stalling CI."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Wait for a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


@dataclass
class Exchange:
    url: str
    nc: NatsClient
    markets: MarketDirectory
    gateway: Gateway
    services: dict[str, MarketService] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    engine_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def define(self, definition: MarketDefinition) -> None:
        kv = await markets_bucket(self.nc.jetstream(), SETTINGS)
        await kv.put(definition.name, encode_definition(definition))
        await self.markets.wait_for(definition.name)

    async def start_engine(self, definition: MarketDefinition) -> MarketService:
        return await self.start_engine_with(definition)

    async def start_engine_with(self, definition: MarketDefinition,
                                pool: asyncpg.Pool | None = None) -> MarketService:
        service = MarketService(self.nc, definition, SETTINGS, pool=pool)
        self.services[definition.name] = service
        self.engine_tasks[definition.name] = asyncio.create_task(service.run())
        await asyncio.wait_for(service.ready.wait(), 10)
        return service

    async def stop_engine(self, name: str) -> None:
        """Stop a market's engine as a crash would: nothing is flushed or handed over."""
        self.services.pop(name)
        task = self.engine_tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def local_exchange(data_dir: Path, *definitions: MarketDefinition,
                         engines: bool = True) -> AsyncIterator[Exchange]:
    """nats-server + gateway (+ an engine per market) for the length of a test."""
    server = NatsServer(data_dir / "nats").start()
    try:
        nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
        kv = await markets_bucket(nc.jetstream(), SETTINGS)
        markets = MarketDirectory()
        follow = asyncio.create_task(markets.follow(kv))
        gateway = Gateway(nc, markets)
        await gateway.start()
        exchange = Exchange(server.url, nc, markets, gateway, tasks=[follow])
        try:
            for definition in definitions:
                await exchange.define(definition)
                if engines:
                    await exchange.start_engine(definition)
            yield exchange
        finally:
            await gateway.stop()
            tasks = [*exchange.tasks, *exchange.engine_tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await nc.close()
    finally:
        server.stop()
