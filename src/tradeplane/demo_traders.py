"""Demo traders for ``tradeplane up --demo``: a market maker and takers keep books alive.

The market maker quotes five levels a side around a mid price that wanders, replacing
its quotes every half second; takers cross the spread now and then with IOC and market
orders. They use the client SDK like any trader would, and like a robust trader they
ride out an outage: a refused or unanswered request is dropped and the next one tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from decimal import Decimal

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core.market import format_decimal
from tradeplane_engine.wire import MarketDefinition
from tradeplane_gateway import RequestError, TradeplaneError, connect

_PASSING: tuple[type[Exception], ...] = (TradeplaneError, *NATS_ERRORS)
"""What a demo trader shrugs off: a refusal, NATS away, an answer that did not come."""


def _on_grid(value: Decimal, step: Decimal) -> str:
    return format_decimal((value / step).to_integral_value() * step)


async def market_maker(url: str, market: MarketDefinition, seed: int) -> None:
    rng = random.Random(seed)
    tick, lot = Decimal(market.tick_size), Decimal(market.lot_size)
    mid = Decimal(market.reference_price or "100")
    size = max(lot, (Decimal(market.min_notional) / mid * 2).quantize(lot) + lot * 10)
    async with connect(url, account=f"mm-{market.name}", max_reconnect_attempts=-1) as client:
        while True:
            mid = max(tick * 100, mid * (1 + Decimal(rng.randint(-10, 10)) / 10_000))
            with contextlib.suppress(*_PASSING):
                await client.cancel_all(market.name, response="ack")
                for level in range(1, 6):
                    spread = tick * 2 * level + mid * Decimal(level) / 2_000
                    quantity = _on_grid(size * rng.randint(1, 4), lot)
                    with contextlib.suppress(RequestError):
                        await client.place(market.name, "buy", quantity,
                                           _on_grid(mid - spread, tick), response="ack")
                        await client.place(market.name, "sell", quantity,
                                           _on_grid(mid + spread, tick), response="ack")
            await asyncio.sleep(0.5)


async def taker(url: str, market: MarketDefinition, name: str, seed: int) -> None:
    rng = random.Random(seed)
    lot = Decimal(market.lot_size)
    mid = Decimal(market.reference_price or "100")
    size = max(lot, (Decimal(market.min_notional) / mid * 2).quantize(lot) + lot * 5)
    async with connect(url, account=name, max_reconnect_attempts=-1) as client:
        while True:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            side = rng.choice(("buy", "sell"))
            with contextlib.suppress(*_PASSING):
                await client.place(market.name, side, _on_grid(size * rng.randint(1, 3), lot),
                                   type="market")


async def run_traders(url: str, markets: list[MarketDefinition]) -> None:
    """Trade on every market until cancelled."""
    async with asyncio.TaskGroup() as group:
        for index, market in enumerate(markets):
            group.create_task(market_maker(url, market, seed=index))
            for number in range(2):
                group.create_task(taker(url, market, f"taker{number}-{market.name}",
                                        seed=100 * index + number))
