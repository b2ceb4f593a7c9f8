"""Demo traders for ``tradeplane up --demo``: a market maker and takers keep books alive.

The market maker quotes five levels a side around a mid price that wanders, replacing
its quotes every half second; takers cross the spread now and then with IOC and market
orders. They use the client SDK like any trader would, and like a robust trader they
ride out an outage: a refused or unanswered request is dropped and the next one tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core.market import format_decimal
from tradeplane_engine.wire import MarketDefinition
from tradeplane_gateway import Client, RequestError, TradeplaneError, connect

log = logging.getLogger(__name__)

_PASSING: tuple[type[Exception], ...] = (TradeplaneError, *NATS_ERRORS)
"""What a demo trader shrugs off: a refusal, NATS away, an answer that did not come."""


def _on_grid(value: Decimal, step: Decimal) -> str:
    return format_decimal((value / step).to_integral_value() * step)


Credentials = Callable[[str], Path]
"""Where a demo trader's credentials file is, by account."""


async def _connected(url: str, credentials: Path) -> AsyncIterator[Client]:
    """Connections of one trader, one after another: a refused or lost connect (NATS or
    the auth service away) is retried."""
    while True:
        try:
            async with connect(url, credentials=credentials,
                               max_reconnect_attempts=-1) as client:
                yield client
                return
        except _PASSING as exc:
            log.info("demo trader %s: %s; connecting again", credentials.stem, exc)
            await asyncio.sleep(1.0)


async def market_maker(url: str, market: MarketDefinition, seed: int,
                       credentials: Credentials) -> None:
    rng = random.Random(seed)
    tick, lot = Decimal(market.tick_size), Decimal(market.lot_size)
    mid = Decimal(market.reference_price or "100")
    size = max(lot, (Decimal(market.min_notional) / mid * 2).quantize(lot) + lot * 10)
    async for client in _connected(url, credentials(f"mm-{market.name}")):
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


async def taker(url: str, market: MarketDefinition, name: str, seed: int,
                credentials: Credentials) -> None:
    rng = random.Random(seed)
    lot = Decimal(market.lot_size)
    mid = Decimal(market.reference_price or "100")
    size = max(lot, (Decimal(market.min_notional) / mid * 2).quantize(lot) + lot * 5)
    async for client in _connected(url, credentials(name)):
        while True:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            side = rng.choice(("buy", "sell"))
            quantity = _on_grid(size * rng.randint(1, 3), lot)
            with contextlib.suppress(*_PASSING):
                if side == "buy":  # with balances, a market buy says what it spends
                    await client.place(market.name, side, type="market",
                                       quote_amount=_on_grid(Decimal(quantity) * mid,
                                                             Decimal(market.tick_size)
                                                             * lot))
                else:
                    await client.place(market.name, side, quantity, type="market")


def trader_accounts(markets: list[MarketDefinition]) -> list[str]:
    """Every demo trader's account."""
    return [name for market in markets
            for name in (f"mm-{market.name}", *(f"taker{n}-{market.name}" for n in range(2)))]


async def run_traders(url: str, markets: list[MarketDefinition],
                      credentials: Credentials) -> None:
    """Trade on every market until cancelled."""
    async with asyncio.TaskGroup() as group:
        for index, market in enumerate(markets):
            group.create_task(market_maker(url, market, index, credentials))
            for number in range(2):
                group.create_task(taker(url, market, f"taker{number}-{market.name}",
                                        100 * index + number, credentials))
