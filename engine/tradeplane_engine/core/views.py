"""Read-only views of a book: L2 (aggregated levels) and L3 (every order)."""

from __future__ import annotations

import msgspec

from tradeplane_engine.core.book import BookSide


class L2Level(msgspec.Struct, frozen=True, array_like=True, gc=False):
    price: int
    quantity: int
    order_count: int


class L2Book(msgspec.Struct, frozen=True):
    """The top levels of each side, best first, as of ``sequence``."""

    sequence: int
    bids: list[L2Level]
    asks: list[L2Level]


class L3Order(msgspec.Struct, frozen=True, array_like=True, gc=False):
    order_id: int
    account: str
    price: int
    remaining: int


class L3Book(msgspec.Struct, frozen=True):
    """Every resting order of each side in priority order (best price, then time)."""

    sequence: int
    bids: list[L3Order]
    asks: list[L3Order]


def l2_side(side: BookSide, depth: int) -> list[L2Level]:
    levels = side.levels
    return [
        L2Level(levels[key].price, levels[key].quantity, levels[key].count)
        for key in side.keys[: -depth - 1 : -1]
    ] if depth > 0 else []


def l3_side(side: BookSide) -> list[L3Order]:
    return [
        L3Order(order.order_id, order.account, order.price, order.remaining)
        for level in side.levels_best_first()
        for order in level.live_orders()
    ]
