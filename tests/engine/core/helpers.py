"""Helpers for the engine tests: command builders, a sequencing ``Book`` and event notation.

Scenario tables describe commands with the builders below (``buy``, ``sell``,
``market_buy``, ``cancel``, ``replace``...). A builder leaves out the sequence and the
timestamp; ``Book.do`` stamps each command with the next sequence, so a table lists
only what a trader would type.

``describe`` renders an event as one short line, so an expected event sequence reads
like an exchange's order log::

    accepted #7
    trade 5 @ 101 maker #1 taker #7
    #1 filled filled 5 left 0
    level sell 101: 0 lots in 0
    #7 canceled filled 5 left 0 IOC_REMAINDER
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypedDict, Unpack

from tradeplane_engine.core import (
    AnyCommand,
    AnyEvent,
    BookLevel,
    Cancel,
    CancelAll,
    Engine,
    MarketSpec,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderType,
    OrderUpdate,
    Place,
    RejectCode,
    Replace,
    SelfTradePrevention,
    SetTradingMode,
    Side,
    TimeInForce,
    Trade,
    TradingModeChanged,
)
from tradeplane_engine.core.market import TradingMode

Step = Callable[[int, int], AnyCommand]
"""A command without its place in the stream: called with (sequence, timestamp)."""

BUY = Side.BUY
SELL = Side.SELL
GTC = TimeInForce.GTC
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
STP_NONE = SelfTradePrevention.NONE
EXPIRE_TAKER = SelfTradePrevention.EXPIRE_TAKER
EXPIRE_MAKER = SelfTradePrevention.EXPIRE_MAKER
EXPIRE_BOTH = SelfTradePrevention.EXPIRE_BOTH
DECREMENT = SelfTradePrevention.DECREMENT

SPEC = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1")
"""One tick is 1 quote unit, one lot 1 base unit: prices and quantities read as written."""

CONVERSION_ONLY_CODES = frozenset({RejectCode.PRICE_NOT_ON_TICK, RejectCode.QUANTITY_NOT_ON_LOT})
"""Codes the engine itself never returns: only the decimal conversion at the edge raises them."""
LEDGER_CODES = frozenset(code for code in RejectCode if 500 <= code < 600)
"""Codes only the ledger returns (tests/engine/ledger)."""


class MarketOptions(TypedDict, total=False):
    """The optional fields of a ``Place`` command but its order type."""

    time_in_force: TimeInForce
    post_only: bool
    stp: SelfTradePrevention
    client_order_id: str
    quote_amount: int


class PlaceOptions(MarketOptions, total=False):
    """The optional fields of a ``Place`` command."""

    order_type: OrderType


def place(account: str, side: Side, quantity: int, price: int,
          **options: Unpack[PlaceOptions]) -> Step:
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return Place(sequence, timestamp, account=account, side=side, quantity=quantity,
                     price=price, **options)
    return build


def buy(account: str, quantity: int, price: int, **options: Unpack[PlaceOptions]) -> Step:
    """A limit buy (GTC unless ``time_in_force`` says otherwise)."""
    return place(account, BUY, quantity, price, **options)


def sell(account: str, quantity: int, price: int, **options: Unpack[PlaceOptions]) -> Step:
    """A limit sell (GTC unless ``time_in_force`` says otherwise)."""
    return place(account, SELL, quantity, price, **options)


def market_buy(account: str, quantity: int = 0, **options: Unpack[MarketOptions]) -> Step:
    """A market buy of ``quantity`` lots, or of ``quote_amount`` tick × lot units."""
    return place(account, BUY, quantity, 0, order_type=OrderType.MARKET, **options)


def market_sell(account: str, quantity: int, **options: Unpack[MarketOptions]) -> Step:
    return place(account, SELL, quantity, 0, order_type=OrderType.MARKET, **options)


def cancel(account: str, order_id: int = 0, client_order_id: str = "") -> Step:
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return Cancel(sequence, timestamp, account=account, order_id=order_id,
                      client_order_id=client_order_id)
    return build


def replace(account: str, order_id: int = 0, *, price: int = 0, quantity: int = 0,
            client_order_id: str = "") -> Step:
    """Change an order's price and/or TOTAL quantity (0 keeps the current value)."""
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return Replace(sequence, timestamp, account=account, order_id=order_id,
                       client_order_id=client_order_id, price=price, quantity=quantity)
    return build


def cancel_all(account: str | None = None, side: Side | None = None) -> Step:
    """Cancel every open order of ``account`` (``None``: of every account, an admin act)."""
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return CancelAll(sequence, timestamp, account=account, side=side)
    return build


def set_mode(mode: TradingMode) -> Step:
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return SetTradingMode(sequence, timestamp, mode=mode)
    return build


def stale(step: Step, behind: int = 1) -> Step:
    """``step`` stamped ``behind`` sequences below the one it is due: a replayed command."""
    def build(sequence: int, timestamp: int) -> AnyCommand:
        return step(sequence - behind, timestamp)
    return build


ASKS: list[Step] = [sell("s1", 5, 101), sell("s2", 5, 101), sell("s3", 5, 102)]
"""Asks #1 and #2 at 101 (in that time order), #3 at 102."""
BIDS: list[Step] = [buy("b1", 5, 99), buy("b2", 5, 99), buy("b3", 5, 98)]
"""Bids #4 and #5 at 99 (in that time order), #6 at 98, when placed after ASKS."""
BOOK = ASKS + BIDS
"""The standard book of the scenario tables, both sides: the next order is #7."""


class Book:
    """An engine that stamps every command with the next sequence (1, 2, 3...)."""

    def __init__(self, spec: MarketSpec = SPEC, steps: Iterable[Step] = ()) -> None:
        self.engine = Engine(spec)
        self.sequence = 0
        self.run(steps)

    def do(self, step: Step) -> list[AnyEvent]:
        """Apply one command, stamped with the next sequence; return its events."""
        self.sequence += 1
        return self.engine.apply(step(self.sequence, self.sequence * 1_000))

    def run(self, steps: Iterable[Step]) -> list[AnyEvent]:
        """Apply commands in order; return all their events."""
        return [event for step in steps for event in self.do(step)]

    def log(self, step: Step) -> list[str]:
        """Apply one command; return its events in ``describe`` notation."""
        return [describe(event) for event in self.do(step)]

    def restored(self) -> Book:
        """A second book restored from this one's snapshot, due the same next sequence."""
        copy = Book(self.engine.spec)
        copy.engine = Engine.restore(self.engine.snapshot())
        copy.sequence = self.sequence
        return copy

    def depth(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(bids, asks) as (price, quantity, order count), best first, every level."""
        book = self.engine.l2(depth=1_000)
        return ([(level.price, level.quantity, level.order_count) for level in book.bids],
                [(level.price, level.quantity, level.order_count) for level in book.asks])

    def queue(self) -> tuple[list[int], list[int]]:
        """(bids, asks) as order ids in priority order: best price first, then time."""
        book = self.engine.l3()
        return [order.order_id for order in book.bids], [order.order_id for order in book.asks]

    def remaining(self) -> dict[int, int]:
        """Every resting order's remaining quantity, by order id."""
        book = self.engine.l3()
        return {order.order_id: order.remaining for order in (*book.bids, *book.asks)}


def describe(event: AnyEvent) -> str:
    """One event as a short line of the order log notation (see the module docstring)."""
    match event:
        case OrderAccepted():
            return f"accepted #{event.order_id}"
        case OrderRejected():
            return f"rejected {event.code.name}"
        case Trade():
            return (f"trade {event.quantity} @ {event.price} "
                    f"maker #{event.maker_order_id} taker #{event.taker_order_id}")
        case OrderUpdate():
            reason = "" if event.reason is None else f" {event.reason.name}"
            return (f"#{event.order_id} {event.status} filled {event.filled_quantity} "
                    f"left {event.remaining_quantity}{reason}")
        case OrderReplaced():
            kept = "kept" if event.priority_kept else "lost"
            return (f"replaced #{event.order_id} {event.quantity} @ {event.price} "
                    f"left {event.remaining_quantity} priority {kept}")
        case BookLevel():
            return f"level {event.side} {event.price}: {event.quantity} lots in {event.order_count}"
        case TradingModeChanged():
            return f"mode {event.mode} from {event.previous}"
    raise AssertionError(f"unexpected event {event!r}")
