"""The order book's data: resting orders, price levels, the two sides, per-account indexes.

Only the matching code in ``matching.py`` mutates these. Each side keeps its levels in
a dict and their keys in a sorted list with the best level at the end, so the best
price is ``keys[-1]`` and removing an exhausted best level is ``keys.pop()``. A side's
key is the price for bids and the negated price for asks, so "better" is "larger" on
both sides and one matching loop serves both.

A level's queue is a list in time priority, read from ``head``. Canceling from the
middle of it would be O(n), so a canceled order is only marked dead (``remaining ==
0``) and counted out of the level; matching skips dead orders when it reaches them,
and a queue with many dead or taken entries is compacted. Matching moves ``head``
past a filled order at once, so within the live part of a queue ``remaining == 0``
means exactly "canceled or replaced away".
"""

from __future__ import annotations

from bisect import bisect_left, insort

from tradeplane_engine.core.commands import SelfTradePrevention, Side


class Order:
    """A resting GTC limit order. Quantities in lots: quantity = filled + remaining + canceled."""

    __slots__ = (
        "account",
        "client_order_id",
        "filled",
        "level",
        "order_id",
        "owner",
        "post_only",
        "price",
        "quantity",
        "remaining",
        "side",
        "stp",
    )

    def __init__(
        self,
        order_id: int,
        account: str,
        client_order_id: str,
        side: Side,
        price: int,
        quantity: int,
        filled: int,
        remaining: int,
        post_only: bool,
        stp: SelfTradePrevention,
        owner: AccountOrders,
        level: Level,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.client_order_id = client_order_id
        self.side = side
        self.price = price
        self.quantity = quantity
        self.filled = filled
        self.remaining = remaining
        self.post_only = post_only
        self.stp = stp
        self.owner = owner
        self.level = level


class Level:
    """One price on one side: its FIFO queue and running totals of its live orders.

    The queue is ``orders[head:]``: matching takes filled and dead orders off the
    front by moving ``head`` on, which compiled code does without a method call.
    """

    __slots__ = ("count", "head", "key", "orders", "price", "quantity", "side")

    def __init__(self, side: Side, price: int, key: int) -> None:
        self.side = side
        self.price = price
        self.key = key
        self.quantity = 0
        self.count = 0
        self.orders: list[Order] = []
        self.head = 0

    def live_orders(self) -> list[Order]:
        return [order for order in self.orders[self.head:] if order.remaining]

    def compact(self) -> None:
        """Drop taken and dead entries once they outnumber live ones: memory stays bounded."""
        if len(self.orders) > 2 * self.count + 16:
            self.orders = self.live_orders()
            self.head = 0


class BookSide:
    """All levels of one side, best at ``keys[-1]``."""

    __slots__ = ("is_bid", "keys", "levels", "side")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.is_bid = side is Side.BUY
        self.keys: list[int] = []
        self.levels: dict[int, Level] = {}

    def level_for(self, price: int) -> Level:
        """The level at ``price``, created (and its key inserted in order) if new."""
        key = self.key_of(price)
        level = self.levels.get(key)
        if level is None:
            level = Level(self.side, price, key)
            self.levels[key] = level
            insort(self.keys, key)
        return level

    def key_of(self, price: int) -> int:
        """The sort key of a price on this side: larger is better.

        A negation, not a multiplication by -1: compiled, multiplying by a negative
        number leaves mypyc's fast path for boxed arithmetic.
        """
        return price if self.is_bid else -price

    def remove(self, level: Level) -> None:
        """Drop an empty level; the best one is the common case and costs O(1).

        Its queue still holds taken and dead orders, which point back at the level:
        clearing it frees them by reference counting instead of leaving a cycle for the
        garbage collector.
        """
        level.orders.clear()
        del self.levels[level.key]
        keys = self.keys
        if keys[-1] == level.key:
            keys.pop()
        else:
            del keys[bisect_left(keys, level.key)]

    def levels_best_first(self) -> list[Level]:
        levels = self.levels
        return [levels[key] for key in reversed(self.keys)]


class AccountOrders:
    """One account's open orders, by order id and by client order id."""

    __slots__ = ("by_client_id", "by_id")

    def __init__(self) -> None:
        self.by_id: dict[int, Order] = {}
        self.by_client_id: dict[str, Order] = {}

    def add(self, order: Order) -> None:
        self.by_id[order.order_id] = order
        if order.client_order_id:
            self.by_client_id[order.client_order_id] = order

    def discard(self, order: Order) -> None:
        del self.by_id[order.order_id]
        if order.client_order_id:
            del self.by_client_id[order.client_order_id]

    def find(self, order_id: int, client_order_id: str) -> Order | None:
        if order_id:
            return self.by_id.get(order_id)
        if client_order_id:
            return self.by_client_id.get(client_order_id)
        return None
