"""The pure matching-engine core: commands in, events out, a state hash to prove it.

Nothing in this package reads a clock, draws a random number, does I/O, logs or
uses binary floating point (import-linter and a test hold it to that).
"""

from tradeplane_engine.core.codes import CancelReason, RejectCode
from tradeplane_engine.core.commands import (
    AnyCommand,
    Cancel,
    CancelAll,
    Command,
    OrderType,
    Place,
    Replace,
    SelfTradePrevention,
    SetTradingMode,
    Side,
    TimeInForce,
)
from tradeplane_engine.core.events import (
    AnyEvent,
    BookLevel,
    Event,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderUpdate,
    Trade,
    TradingModeChanged,
)
from tradeplane_engine.core.market import MAX_UNITS, MarketSpec, OffGrid, TradingMode, UnitFormatter
from tradeplane_engine.core.matching import Engine
from tradeplane_engine.core.views import L2Book, L2Level, L3Book, L3Order

__all__ = [
    "MAX_UNITS",
    "AnyCommand",
    "AnyEvent",
    "BookLevel",
    "Cancel",
    "CancelAll",
    "CancelReason",
    "Command",
    "Engine",
    "Event",
    "L2Book",
    "L2Level",
    "L3Book",
    "L3Order",
    "MarketSpec",
    "OffGrid",
    "OrderAccepted",
    "OrderRejected",
    "OrderReplaced",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "Place",
    "RejectCode",
    "Replace",
    "SelfTradePrevention",
    "SetTradingMode",
    "Side",
    "TimeInForce",
    "Trade",
    "TradingMode",
    "TradingModeChanged",
    "UnitFormatter",
]
