"""Events: what applying one command did, in the order it happened.

``Engine.apply(command)`` returns a list of these; the command's sequence and timestamp
frame them (the service publishes one message per command), so events do not repeat
them. Every field is an integer, a string or an enum, so an event encodes to JSON or
MessagePack as it is.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from tradeplane_engine.core.codes import CancelReason, RejectCode
from tradeplane_engine.core.commands import OrderType, SelfTradePrevention, Side, TimeInForce
from tradeplane_engine.core.market import TradingMode


class OrderStatus(StrEnum):
    PARTIALLY_FILLED = "partiallyFilled"
    """Some of it traded; the rest is still open (or, for a taker, about to rest)."""
    FILLED = "filled"
    """Nothing is left open and it ended by trading. ``filled_quantity`` is below the
    order's quantity only where self-trade prevention (decrement) took lots from it."""
    CANCELED = "canceled"
    """It left the book, or never rested; ``reason`` says why."""
    REDUCED = "reduced"
    """Self-trade prevention (decrement) lowered its open quantity without a trade, and it
    is still open: a resting order the incoming one met, or the incoming order itself when
    it rests after a decrement took lots from it (``filled_quantity`` says whether it also
    traded; its lots are filled + remaining + those gone without a trade)."""


def open_status(filled: int) -> str:
    """The status an open order shows (status queries, open orders, the recorder's rows,
    replies): ``partiallyFilled`` once anything of it traded, else ``new``."""
    return "partiallyFilled" if filled else "new"


class Event(msgspec.Struct, frozen=True, gc=False, tag_field="type"):
    pass


class OrderAccepted(Event, frozen=True, gc=False, tag="accepted"):
    """The order passed every check and got its id; it matches next."""

    order_id: int
    account: str
    client_order_id: str
    side: Side
    order_type: OrderType
    price: int
    quantity: int
    quote_amount: int
    time_in_force: TimeInForce
    post_only: bool
    stp: SelfTradePrevention


class OrderRejected(Event, frozen=True, gc=False, tag="rejected"):
    """The command changed nothing.

    ``command`` is the refused command's type (``place``, ``cancel``, ``replace``,
    ``cancelAll``, ...). Only a refused place is an order of its own: a new order that
    ended here, without an id. A refused cancel or replace names an order that exists,
    or no longer does, by ``order_id`` or by ``client_order_id`` (``order_id`` 0 then):
    its refusal says nothing about that order's state.
    """

    account: str
    client_order_id: str
    order_id: int
    code: RejectCode
    reason: str
    command: str = ""
    """The refused command's ``type``; empty in events stored before it was recorded."""

    @property
    def new_order(self) -> bool:
        """Whether this is a refused place: a new order whose state is ``rejected``."""
        return self.command == "place"


class Trade(Event, frozen=True, gc=False, tag="trade"):
    """One match between a resting (maker) and an incoming (taker) order, at the maker's price."""

    trade_id: int
    price: int
    quantity: int
    aggressor_side: Side
    maker_order_id: int
    maker_account: str
    taker_order_id: int
    taker_account: str


class OrderUpdate(Event, frozen=True, gc=False, tag="orderUpdate"):
    """An order's state after a fill, a cancel or a self-trade decrement.

    Resting (maker) orders get one per fill or decrement; the incoming order gets one
    when its matching ends (its fills are in the ``Trade`` events before it), unless it
    rests untouched. So an order's own events always give its open quantity.
    """

    order_id: int
    account: str
    client_order_id: str
    status: OrderStatus
    filled_quantity: int
    remaining_quantity: int
    reason: CancelReason | None = None


class OrderReplaced(Event, frozen=True, gc=False, tag="replaced"):
    """A replace took effect; ``priority_kept`` says whether the order kept its queue place.

    ``side`` and ``filled_quantity`` describe the order whole, so that its replace needs
    no earlier event to be told: what is gone without a trade (a self-trade decrement)
    is ``quantity - filled_quantity - remaining_quantity``. Both are None in events
    stored before they were recorded.
    """

    order_id: int
    account: str
    client_order_id: str
    price: int
    quantity: int
    remaining_quantity: int
    priority_kept: bool
    side: Side | None = None
    filled_quantity: int | None = None


class BookLevel(Event, frozen=True, gc=False, tag="level"):
    """L2: after this command the level holds this quantity in this many orders (0: gone)."""

    side: Side
    price: int
    quantity: int
    order_count: int


class TradingModeChanged(Event, frozen=True, gc=False, tag="mode"):
    mode: TradingMode
    previous: TradingMode


AnyEvent = (
    OrderAccepted | OrderRejected | Trade | OrderUpdate | OrderReplaced | BookLevel
    | TradingModeChanged
)
