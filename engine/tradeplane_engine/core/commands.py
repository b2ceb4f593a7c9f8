"""Commands: everything that can happen to a market, in the order the sequencer gave it.

Every command carries the sequence number and timestamp the sequencer (the market's
JetStream command stream) assigned to it; the engine never reads a clock. Prices are
whole ticks, quantities whole lots, quote amounts whole tick × lot units: the gateway
converts decimal strings with ``MarketSpec.to_ticks`` and friends before it builds one.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from tradeplane_engine.core.market import TradingMode


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "GTC"
    """Good till canceled: the unfilled part rests in the book."""
    IOC = "IOC"
    """Immediate or cancel: fill what can be filled now, cancel the rest."""
    FOK = "FOK"
    """Fill or kill: fill all of it now, or none of it."""


class SelfTradePrevention(StrEnum):
    """What happens when an order would trade against its own account's order.

    The incoming (taker) order's mode governs, as on Binance and Coinbase.
    """

    NONE = "none"
    """Allow the self-trade."""
    EXPIRE_TAKER = "expireTaker"
    """Cancel the rest of the incoming order; the resting order stays."""
    EXPIRE_MAKER = "expireMaker"
    """Cancel the resting order and keep matching the incoming one (the default)."""
    EXPIRE_BOTH = "expireBoth"
    """Cancel the resting order and the rest of the incoming one."""
    DECREMENT = "decrement"
    """Reduce both by the smaller quantity without a trade; an order reduced to zero is canceled."""


class _Indexed(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    index: int = 0
    """Its place among the commands of one command-stream message, which share the
    message's ``sequence`` (0 for a command alone in its message). Keyword-only, and
    last among a command's fields."""


class Command(_Indexed, frozen=True, gc=False, tag_field="type"):
    sequence: int
    """Position in the market's command stream (its message's): commands are applied in
    (sequence, index) order, each above the last."""
    timestamp: int
    """Nanoseconds since the Unix epoch, stamped when the command was sequenced."""


class Place(Command, frozen=True, gc=False, tag="place"):
    """A new order. Limit orders need a price; market orders need quantity or quote amount."""

    account: str
    side: Side
    quantity: int = 0
    """Lots. For a market buy, give either quantity or quote_amount."""
    price: int = 0
    """Ticks; 0 for market orders."""
    order_type: OrderType = OrderType.LIMIT
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_MAKER
    client_order_id: str = ""
    quote_amount: int = 0
    """Market buys only: spend at most this much quote (tick × lot units, at most
    ``MAX_UNITS`` of them, as prices and quantities)."""


class Cancel(Command, frozen=True, gc=False, tag="cancel"):
    """Cancel one of the account's open orders, by order id or by client order id."""

    account: str
    order_id: int = 0
    client_order_id: str = ""


class Replace(Command, frozen=True, gc=False, tag="replace"):
    """Change an open order's price and/or total quantity.

    ``quantity`` is the new total (filled included), as on CME and Coinbase; what is gone
    for good (filled lots, lots a self-trade decrement took) stays gone. Lowering it
    at the same price keeps the order's place in the queue; a new price or a larger
    quantity sends it to the back, and a new price that crosses trades at once.
    0 keeps the current value.
    """

    account: str
    order_id: int = 0
    client_order_id: str = ""
    price: int = 0
    quantity: int = 0


class CancelAll(Command, frozen=True, gc=False, tag="cancelAll"):
    """Cancel every open order of an account (``None``: of every account, an admin act)."""

    account: str | None = None
    side: Side | None = None


class SetTradingMode(Command, frozen=True, gc=False, tag="setTradingMode"):
    """An admin command: change what the market accepts, between two orders."""

    mode: TradingMode


AnyCommand = Place | Cancel | Replace | CancelAll | SetTradingMode


def command_type(command: Command) -> str:
    """The command's ``type`` as it is encoded (``place``, ``cancel``...)."""
    tag = type(command).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
