"""The matching engine: ``Engine.apply(command) -> events``, a pure state machine.

No clock, randomness, I/O, logging or floats: the same commands always give the same
events and the same ``state_hash()``, in any process, which is what lets hot standbys
and replays prove they hold the leader's book.

Matching is price-time priority at the resting order's price. The place path is the
hot path of the whole exchange and is written for speed: locals instead of attribute
lookups, enum members bound to module names and compared by identity, positional
struct construction.
"""

from __future__ import annotations

from typing import Any, Final

from msgspec.structs import astuple

from tradeplane_engine.core.book import AccountOrders, BookSide, Level, Order
from tradeplane_engine.core.codes import CancelReason, RejectCode
from tradeplane_engine.core.commands import (
    AnyCommand,
    Cancel,
    CancelAll,
    OrderType,
    Place,
    Replace,
    SelfTradePrevention,
    SetTradingMode,
    Side,
    TimeInForce,
    command_type,
)
from tradeplane_engine.core.events import (
    AnyEvent,
    BookLevel,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderUpdate,
    Trade,
    TradingModeChanged,
)
from tradeplane_engine.core.market import MAX_UNITS, MarketSpec, TradingMode
from tradeplane_engine.core.state import SNAPSHOT_VERSION, EngineState, RestingOrder, digest
from tradeplane_engine.core.state import decode as decode_state
from tradeplane_engine.core.state import encode as encode_state
from tradeplane_engine.core.views import L2Book, L3Book, l2_side, l3_side

_BUY: Final = Side.BUY
_LIMIT: Final = OrderType.LIMIT
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
_STP_NONE: Final = SelfTradePrevention.NONE
_EXPIRE_TAKER: Final = SelfTradePrevention.EXPIRE_TAKER
_EXPIRE_BOTH: Final = SelfTradePrevention.EXPIRE_BOTH
_DECREMENT: Final = SelfTradePrevention.DECREMENT
_OPEN: Final = TradingMode.OPEN
_POST_ONLY_MODE: Final = TradingMode.POST_ONLY
_HALTED: Final = TradingMode.HALTED
_CANCEL_ONLY: Final = TradingMode.CANCEL_ONLY
_PARTIAL: Final = OrderStatus.PARTIALLY_FILLED
_FILLED: Final = OrderStatus.FILLED
_CANCELED: Final = OrderStatus.CANCELED
_REDUCED: Final = OrderStatus.REDUCED
_STP: Final = CancelReason.STP
_USER: Final = CancelReason.USER
_ADMIN: Final = CancelReason.ADMIN
_IOC_REMAINDER: Final = CancelReason.IOC_REMAINDER
_FOK_UNFILLED: Final = CancelReason.FOK_UNFILLED
_MARKET_REMAINDER: Final = CancelReason.MARKET_REMAINDER
_POST_ONLY_WOULD_CROSS: Final = CancelReason.POST_ONLY_WOULD_CROSS
_MODE: Final = CancelReason.MODE
_MAX_UNITS: Final = MAX_UNITS
# Classes the hot path names, bound once (compiled, a plain global costs a dict lookup).
_OrderAccepted: Final = OrderAccepted
_Trade: Final = Trade
_OrderUpdate: Final = OrderUpdate
_BookLevel: Final = BookLevel
_Place: Final = Place
_Cancel: Final = Cancel


_PlaceFields = tuple[int, int, str, Side, int, int, OrderType, TimeInForce, bool,
                     SelfTradePrevention, str, int, int]
"""``Place``'s fields in declaration order (``index``, keyword-only, last)."""
_WHOLE: Final = 1 << 62
"""``last_index`` after a restore: a snapshot is taken between messages, so every
command of its last sequence is in it."""


_Taker = tuple[int, str, Side, int, SelfTradePrevention, int]
"""The incoming order of a match, a new one or a replaced one that lost its place:
``(order_id, account, side, quantity, stp, quote_amount)``, ``quantity`` being what is
left of it in lots (0 for a market buy by quote amount). A tuple, not a class: compiled,
it is passed by value, with no object to allocate on the hot path."""


class Engine:
    """One market's order book and the rules that change it.

    Build it from a ``MarketSpec`` (or ``Engine.restore`` one from a snapshot) and feed it
    every command of the market's command stream in sequence order.
    """

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        rules = spec.rules()
        self._min_notional = rules.min_notional
        self._band_numerator = rules.band_numerator
        self._band_denominator = rules.band_denominator
        self.reference_price = rules.reference_price
        self.mode = spec.trading_mode
        self.last_sequence = 0
        self.last_index = 0
        """Where the last command stood among its message's (``Command.index``)."""
        self.next_order_id = 1
        self.next_trade_id = 1
        self.bids = BookSide(Side.BUY)
        self.asks = BookSide(Side.SELL)
        self.accounts: dict[str, AccountOrders] = {}

    # -- the entry point -------------------------------------------------------------

    def apply(self, command: AnyCommand) -> list[AnyEvent]:
        """Apply one sequenced command and return what it did.

        A command the market cannot take is answered with an ``OrderRejected`` event,
        never an exception. Types are not checked here: commands decoded with msgspec
        (as the services do) are well typed by construction.
        """
        sequence = command.sequence
        previous = self.last_sequence
        index = command.index
        previous_index = self.last_index
        if sequence < previous or (sequence == previous and index <= previous_index):
            return [OrderRejected(
                getattr(command, "account", None) or "", getattr(command, "client_order_id", ""),
                getattr(command, "order_id", 0), RejectCode.SEQUENCE_OUT_OF_ORDER,
                _out_of_order(sequence, index, previous, previous_index), command_type(command),
            )]
        self.last_sequence = sequence
        self.last_index = index
        if type(command) is _Place:
            return self._place(command)
        if type(command) is _Cancel:
            return self._cancel(command)
        if type(command) is Replace:
            return self._replace(command)
        if type(command) is CancelAll:
            return self._cancel_all(command)
        if type(command) is SetTradingMode:
            return self._set_trading_mode(command)
        self.last_sequence = previous
        self.last_index = previous_index
        raise TypeError(f"not a command: {type(command).__name__}")

    # -- state -----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything needed to continue exactly from here, in a canonical encoding."""
        return encode_state(EngineState(
            SNAPSHOT_VERSION, self.spec, self.mode, self.last_sequence, self.next_order_id,
            self.next_trade_id, self.reference_price, _resting(self.bids), _resting(self.asks),
        ))

    def state_hash(self) -> str:
        """SHA-256 of the snapshot: equal for equal books, in any process and on any run."""
        return digest(self.snapshot())

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """An engine that continues exactly as the one that took the snapshot would."""
        state = decode_state(data)
        engine = cls(state.spec)
        engine.mode = state.mode
        engine.last_sequence = state.last_sequence
        engine.last_index = _WHOLE
        engine.next_order_id = state.next_order_id
        engine.next_trade_id = state.next_trade_id
        engine.reference_price = state.reference_price
        for record in (*state.bids, *state.asks):
            owner = engine.accounts.get(record.account)
            if owner is None:
                owner = engine.accounts[record.account] = AccountOrders()
            level = (engine.bids if record.side is _BUY else engine.asks).level_for(record.price)
            order = Order(record.order_id, record.account, record.client_order_id, record.side,
                          record.price, record.quantity, record.filled, record.remaining,
                          record.post_only, record.stp, owner, level)
            engine._rest(order)
        return engine

    def l2(self, depth: int = 10) -> L2Book:
        """The top ``depth`` levels of each side, best first."""
        return L2Book(self.last_sequence, l2_side(self.bids, depth), l2_side(self.asks, depth))

    def l3(self) -> L3Book:
        """Every resting order, best price first, then time priority."""
        return L3Book(self.last_sequence, l3_side(self.bids), l3_side(self.asks))

    def open_order(self, account: str, order_id: int = 0,
                   client_order_id: str = "") -> Order | None:
        """An account's open order by id or client id (read-only use, please)."""
        return self._find(account, order_id, client_order_id)

    # -- place -----------------------------------------------------------------------

    def _place(self, c: Place) -> list[AnyEvent]:
        # One C call for every field beats eleven attribute lookups once compiled.
        fields: _PlaceFields = astuple(c)
        (_, _, account, side, quantity, price, order_type, time_in_force, post_only, stp,
         client_order_id, quote_amount, _) = fields
        price_ref: Any = fields[5]  # the boxed int as it came: events reuse it
        if self.mode is not _OPEN:
            refused = self._mode_refuses_place(c)
            if refused is not None:
                return refused
        if order_type is _LIMIT:
            if not 0 < price <= _MAX_UNITS:
                return _reject(c, RejectCode.INVALID_PRICE, self._price_reason(price))
            if not 0 < quantity <= _MAX_UNITS:
                return _reject(c, RejectCode.INVALID_QUANTITY, self._quantity_reason(quantity))
            if quote_amount or (post_only and time_in_force is not _GTC):
                return _reject(c, RejectCode.INVALID_ORDER_PARAMS,
                               "quote amount is for market buys; post-only is for GTC orders")
            if price * quantity < self._min_notional:
                return _reject(c, RejectCode.BELOW_MIN_NOTIONAL,
                               f"order value below the minimum notional {self.spec.min_notional}")
            reference = self.reference_price
            if (reference and self._band_numerator
                    and abs(price - reference) * self._band_denominator
                    > reference * self._band_numerator):
                return _reject(c, RejectCode.OUTSIDE_PRICE_BAND, self._band_reason(reference))
        else:
            invalid = self._check_market_order(c)
            if invalid is not None:
                return invalid
        if not account:
            return _reject(c, RejectCode.INVALID_ORDER_PARAMS, "account is required")
        if client_order_id:
            owner = self.accounts.get(account)
            if owner is not None and client_order_id in owner.by_client_id:
                return _reject(c, RejectCode.DUPLICATE_CLIENT_ORDER_ID,
                               f"client order id {client_order_id!r} is already open")

        order_id = self.next_order_id
        self.next_order_id = order_id + 1
        order_ref: Any = order_id  # boxed once, not once per event (compiled)
        events: list[AnyEvent] = []  # appending to an empty list sizes it for 4 at once
        events.append(_OrderAccepted(
            order_ref, account, client_order_id, side, order_type, price_ref, quantity,
            quote_amount, time_in_force, post_only, stp,
        ))
        opposite = self.asks if side is _BUY else self.bids
        if order_type is not _LIMIT:
            price = self._market_order_limit(side)
        limit_key = opposite.key_of(price)
        keys = opposite.keys

        filled = 0
        remaining = quantity
        expired = False
        if keys and keys[-1] >= limit_key:
            if post_only or self.mode is _POST_ONLY_MODE:
                reason = _POST_ONLY_WOULD_CROSS if post_only else _MODE
                events.append(_OrderUpdate(order_ref, account, client_order_id, _CANCELED, 0, 0,
                                           reason))
                return events
            if time_in_force is _FOK and not _fillable(opposite, limit_key, account, quantity,
                                                       stp):
                events.append(_OrderUpdate(order_ref, account, client_order_id, _CANCELED, 0, 0,
                                           _FOK_UNFILLED))
                return events
            filled, remaining, expired = self._match(
                events, opposite, limit_key, (order_id, account, side, quantity, stp, quote_amount))

        if expired:
            events.append(_OrderUpdate(order_ref, account, client_order_id, _CANCELED, filled, 0,
                                       _STP))
        elif order_type is not _LIMIT:
            if remaining or not filled:
                reason = (_FOK_UNFILLED if time_in_force is _FOK
                          else _MARKET_REMAINDER)
                events.append(_OrderUpdate(order_ref, account, client_order_id, _CANCELED, filled,
                                           0, reason))
            else:
                events.append(_OrderUpdate(order_ref, account, client_order_id, _FILLED, filled, 0))
        elif not remaining:
            events.append(_OrderUpdate(order_ref, account, client_order_id, _FILLED, filled, 0))
        elif time_in_force is _GTC:
            if filled + remaining != quantity:  # a self-trade decrement took lots from it
                events.append(_OrderUpdate(order_ref, account, client_order_id, _REDUCED, filled,
                                           remaining, _STP))
            elif filled:
                events.append(_OrderUpdate(order_ref, account, client_order_id, _PARTIAL, filled,
                                           remaining))
            owner = self.accounts.get(account)  # looked up only for orders that rest
            if owner is None:
                owner = self.accounts[account] = AccountOrders()
            own = self.bids if side is _BUY else self.asks
            level = own.level_for(price)
            self._rest(Order(order_id, account, client_order_id, side, price, quantity, filled,
                             remaining, post_only, stp, owner, level))
            events.append(_BookLevel(side, price_ref, level.quantity, level.count))
        else:
            reason = (_IOC_REMAINDER if time_in_force is _IOC
                      else _FOK_UNFILLED)
            events.append(_OrderUpdate(order_ref, account, client_order_id, _CANCELED, filled, 0,
                                       reason))
        return events

    def _match(self, events: list[AnyEvent], opposite: BookSide, limit_key: int,
               taker: _Taker) -> tuple[int, int, bool]:
        """Match ``taker`` against ``opposite`` up to ``limit_key``, appending to ``events``;
        return (filled, remaining, expired).

        ``remaining`` is in lots; a market buy by quote amount enters with quantity 0 and
        buys at each level as many lots as its quote left affords. ``expired`` says that
        self-trade prevention canceled the rest of the incoming order.
        """
        taker_id, account, aggressor, quantity, stp, quote_amount = taker
        keys = opposite.keys
        levels = opposite.levels
        maker_side = opposite.side
        trade_id = self.next_trade_id
        filled = 0
        remaining = quantity
        quote_left = quote_amount
        expired = False
        last_price = 0
        taker_ref: Any = taker_id  # boxed once, not once per event (compiled)
        while keys and keys[-1] >= limit_key:
            level = levels[keys[-1]]
            price = level.price
            price_ref: Any = price
            if quote_amount:
                remaining = quote_left // price
                if not remaining:
                    break
            at_level = remaining
            quantity_before = level.quantity
            orders = level.orders
            head = level.head
            end = len(orders)
            while remaining and head < end:
                maker = orders[head]
                maker_remaining = maker.remaining
                if not maker_remaining:
                    head += 1  # canceled earlier: dropped lazily
                    continue
                if stp is not _STP_NONE and maker.account == account:
                    if stp is _EXPIRE_TAKER:
                        expired = True
                        break
                    if stp is _DECREMENT:
                        reduce = remaining if remaining < maker_remaining else maker_remaining
                        remaining -= reduce
                        maker.remaining = maker_remaining = maker_remaining - reduce
                        level.quantity -= reduce
                        if maker_remaining:
                            events.append(_OrderUpdate(
                                maker.order_id, account, maker.client_order_id, _REDUCED,
                                maker.filled, maker_remaining, _STP))
                            expired = True  # the incoming order is the smaller: all of it went
                            break
                    else:
                        maker.remaining = 0
                        level.quantity -= maker_remaining
                    head += 1
                    level.count -= 1
                    maker.owner.discard(maker)
                    events.append(_OrderUpdate(maker.order_id, account, maker.client_order_id,
                                               _CANCELED, maker.filled, 0, _STP))
                    if stp is _EXPIRE_BOTH or (stp is _DECREMENT and not remaining):
                        expired = True
                        break
                    continue
                fill = remaining if remaining < maker_remaining else maker_remaining
                maker_ref: Any = maker.order_id  # boxed once for both events
                events.append(_Trade(trade_id, price_ref, fill, aggressor, maker_ref,
                                     maker.account, taker_ref, account))
                trade_id += 1
                remaining -= fill
                filled += fill
                maker.filled += fill
                level.quantity -= fill
                maker_remaining -= fill
                maker.remaining = maker_remaining
                if maker_remaining:
                    events.append(_OrderUpdate(maker_ref, maker.account, maker.client_order_id,
                                               _PARTIAL, maker.filled, maker_remaining))
                else:
                    head += 1
                    level.count -= 1
                    maker.owner.discard(maker)
                    events.append(_OrderUpdate(maker_ref, maker.account, maker.client_order_id,
                                               _FILLED, maker.filled, 0))
                last_price = price
            if level.quantity != quantity_before:
                events.append(_BookLevel(maker_side, price_ref, level.quantity, level.count))
            if not level.count:
                del levels[keys.pop()]
                orders.clear()  # taken orders point back at the level: free them now, not in GC
            else:
                level.head = head
                if head > 32 and head * 2 > end:
                    level.compact()
            if quote_amount:
                quote_left -= (at_level - remaining) * price
                remaining = 0
            if expired or (remaining == 0 and not quote_amount):
                break
        self.next_trade_id = trade_id
        if last_price:
            self.reference_price = last_price
        if quote_amount:
            remaining = quote_left
        return filled, remaining, expired

    def _mode_refuses_place(self, c: Place) -> list[AnyEvent] | None:
        mode = self.mode
        if mode is _HALTED:
            return _reject(c, RejectCode.MARKET_HALTED, "the market is halted")
        if mode is _CANCEL_ONLY:
            return _reject(c, RejectCode.MARKET_CANCEL_ONLY, "the market accepts cancels only")
        if mode is _POST_ONLY_MODE and (c.order_type is not _LIMIT or c.time_in_force is not _GTC):
            return _reject(c, RejectCode.MARKET_POST_ONLY,
                           "the market accepts only GTC limit orders that rest")
        return None

    def _check_market_order(self, c: Place) -> list[AnyEvent] | None:
        if c.price:
            return _reject(c, RejectCode.INVALID_PRICE, "market orders take no price")
        if c.post_only:
            return _reject(c, RejectCode.INVALID_ORDER_PARAMS, "market orders cannot be post-only")
        if c.quote_amount:
            if c.quantity or c.side is not _BUY or c.time_in_force is _FOK:
                return _reject(c, RejectCode.INVALID_ORDER_PARAMS,
                               "a quote amount goes alone (no quantity), on a market buy, not FOK")
            if not 0 < c.quote_amount <= _MAX_UNITS:
                return _reject(c, RejectCode.INVALID_QUANTITY,
                               self._quote_amount_reason(c.quote_amount))
            if c.quote_amount < self._min_notional:
                return _reject(c, RejectCode.BELOW_MIN_NOTIONAL, "quote amount below min notional")
        elif not 0 < c.quantity <= _MAX_UNITS:
            return _reject(c, RejectCode.INVALID_QUANTITY, self._quantity_reason(c.quantity))
        return None

    def _market_order_limit(self, side: Side) -> int:
        """The worst price a market order may trade at: the band's edge, or the whole book."""
        reference = self.reference_price
        numerator = self._band_numerator
        denominator = self._band_denominator
        if side is _BUY:
            if reference and numerator:
                return reference * (denominator + numerator) // denominator
            return _MAX_UNITS + 1
        if reference and numerator:
            return -(-reference * (denominator - numerator) // denominator)
        return 0

    # -- cancel, replace, cancel-all, mode -------------------------------------------

    def _cancel(self, c: Cancel) -> list[AnyEvent]:
        if self.mode is _HALTED:
            return _reject(c, RejectCode.MARKET_HALTED, "the market is halted")
        order = self._find(c.account, c.order_id, c.client_order_id)
        if order is None:
            return _reject(c, RejectCode.UNKNOWN_ORDER, "no such open order")
        events: list[AnyEvent] = []
        self._remove_resting(order, _USER, events)
        events.append(_level_event(order.level))
        return events

    def _replace(self, c: Replace) -> list[AnyEvent]:
        if self.mode is _HALTED:
            return _reject(c, RejectCode.MARKET_HALTED, "the market is halted")
        if self.mode is _CANCEL_ONLY:
            return _reject(c, RejectCode.MARKET_CANCEL_ONLY, "the market accepts cancels only")
        order = self._find(c.account, c.order_id, c.client_order_id)
        if order is None:
            return _reject(c, RejectCode.UNKNOWN_ORDER, "no such open order")
        price = c.price or order.price
        quantity = c.quantity or order.quantity
        invalid = self._check_replace(c, order, price, quantity)
        if invalid is not None:
            return invalid
        # The new total counts what is gone for good: filled lots, and lots a self-trade
        # decrement took. What is left of it is open.
        remaining = quantity - (order.quantity - order.remaining)

        level = order.level
        events: list[AnyEvent] = []
        if price == order.price and quantity <= order.quantity:
            level.quantity -= order.remaining - remaining
            order.quantity = quantity
            order.remaining = remaining
            events.append(OrderReplaced(order.order_id, order.account, order.client_order_id,
                                        price, quantity, order.remaining, True, order.side,
                                        order.filled))
            events.append(_level_event(level))
            return events

        # Losing priority: the old entry dies in its queue and the order enters anew.
        self._unlink(order)
        events.append(OrderReplaced(order.order_id, order.account, order.client_order_id, price,
                                    quantity, remaining, False, order.side, order.filled))
        # At the same price the order goes back into the level it left (it cannot cross:
        # the book is never crossed): that level is told once, when the order is back in
        # it, never in the state between without it.
        if price != order.price:
            events.append(_level_event(level))
        side = order.side
        opposite = self.asks if side is _BUY else self.bids
        limit_key = opposite.key_of(price)
        keys = opposite.keys
        filled = order.filled
        opened = remaining  # open as it enters matching
        expired = False
        if keys and keys[-1] >= limit_key:
            if order.post_only or self.mode is _POST_ONLY_MODE:
                reason = (_POST_ONLY_WOULD_CROSS if order.post_only
                          else _MODE)
                events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                           _CANCELED, filled, 0, reason))
                return events
            traded, remaining, expired = self._match(
                events, opposite, limit_key, (order.order_id, order.account, side, remaining,
                                              order.stp, 0))
            filled += traded
        if expired:
            events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                       _CANCELED, filled, 0, _STP))
        elif not remaining:
            events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                       _FILLED, filled, 0))
        else:
            own = self.bids if side is _BUY else self.asks
            new_level = own.level_for(price)
            self._rest(Order(order.order_id, order.account, order.client_order_id, side, price,
                             quantity, filled, remaining, order.post_only, order.stp, order.owner,
                             new_level))
            if filled - order.filled + remaining != opened:  # a decrement took lots from it
                events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                           _REDUCED, filled, remaining, _STP))
            elif filled > order.filled:
                events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                           _PARTIAL, filled, remaining))
            events.append(_level_event(new_level))
        return events

    def _check_replace(self, c: Replace, order: Order, price: int,
                       quantity: int) -> list[AnyEvent] | None:
        """The rejection of a replace to ``price`` and total ``quantity``, if it is one."""
        if not 0 < price <= _MAX_UNITS:
            return _reject(c, RejectCode.INVALID_PRICE, self._price_reason(price))
        if not 0 < quantity <= _MAX_UNITS:
            return _reject(c, RejectCode.INVALID_QUANTITY, self._quantity_reason(quantity))
        gone = order.quantity - order.remaining  # filled, or taken by a self-trade decrement
        if quantity - gone <= 0:
            return _reject(c, RejectCode.REPLACE_QUANTITY_TOO_LOW,
                           f"new quantity must exceed the {self.spec.from_lots(gone)} already "
                           "filled or taken by self-trade prevention")
        if price * quantity < self._min_notional:
            return _reject(c, RejectCode.BELOW_MIN_NOTIONAL,
                           f"order value below the minimum notional {self.spec.min_notional}")
        reference = self.reference_price
        if (price != order.price and reference and self._band_numerator
                and abs(price - reference) * self._band_denominator
                > reference * self._band_numerator):
            return _reject(c, RejectCode.OUTSIDE_PRICE_BAND, self._band_reason(reference))
        return None

    def _cancel_all(self, c: CancelAll) -> list[AnyEvent]:
        if self.mode is _HALTED and c.account is not None:
            return _reject(c, RejectCode.MARKET_HALTED, "the market is halted")
        if c.account is None:
            owners = list(self.accounts.values())
            reason = _ADMIN
        else:
            owner = self.accounts.get(c.account)
            owners = [] if owner is None else [owner]
            reason = _USER
        doomed = sorted(
            (order for owner in owners for order in owner.by_id.values()
             if c.side is None or order.side is c.side),
            key=lambda order: order.order_id,
        )
        events: list[AnyEvent] = []
        touched: dict[tuple[bool, int], Level] = {}
        for order in doomed:
            self._remove_resting(order, reason, events)
            touched[(order.side is not _BUY, order.price)] = order.level
        for key in sorted(touched):
            events.append(_level_event(touched[key]))
        return events

    def _set_trading_mode(self, c: SetTradingMode) -> list[AnyEvent]:
        previous = self.mode
        self.mode = c.mode
        return [TradingModeChanged(c.mode, previous)]

    # -- helpers ---------------------------------------------------------------------

    def _price_reason(self, price: int) -> str:
        """Why a price is out of range, in the market's own decimals (a cold path)."""
        if price > _MAX_UNITS:
            return (f"price must be at most {self.spec.from_ticks(_MAX_UNITS)} "
                    f"({_MAX_UNITS} ticks)")
        return "price must be 1 tick or more"

    def _quantity_reason(self, quantity: int) -> str:
        """Why a quantity is out of range, in the market's own decimals (a cold path)."""
        if quantity > _MAX_UNITS:
            return (f"quantity must be at most {self.spec.from_lots(_MAX_UNITS)} "
                    f"({_MAX_UNITS} lots)")
        return "quantity must be 1 lot or more"

    def _quote_amount_reason(self, quote_amount: int) -> str:
        """Why a quote amount is out of range, in the market's own decimals (a cold path)."""
        if quote_amount > _MAX_UNITS:
            return f"quote amount must be at most {self.spec.from_notional_units(_MAX_UNITS)}"
        return "quote amount must be positive"

    def _band_reason(self, reference: int) -> str:
        """Why a price is outside the band, in the market's own decimals (a cold path)."""
        return (f"price is more than {self.spec.price_band}% from the reference price "
                f"{self.spec.from_ticks(reference)}")

    def _find(self, account: str, order_id: int, client_order_id: str) -> Order | None:
        owner = self.accounts.get(account)
        if owner is None:
            return None
        order = owner.find(order_id, client_order_id)
        if order is not None and client_order_id and order.client_order_id != client_order_id:
            return None
        return order

    def _rest(self, order: Order) -> None:
        """Put a new resting order at the back of its level's queue and in its owner's index."""
        level = order.level
        level.orders.append(order)
        level.count += 1
        level.quantity += order.remaining
        order.owner.add(order)

    def _unlink(self, order: Order) -> None:
        """Take a resting order out of the book: dead in its queue, gone from its owner's index.

        Its level goes with it when it was the last order there.
        """
        level = order.level
        level.quantity -= order.remaining
        level.count -= 1
        order.remaining = 0
        order.owner.discard(order)
        if level.count:
            level.compact()
        else:
            (self.bids if level.side is _BUY else self.asks).remove(level)

    def _remove_resting(self, order: Order, reason: CancelReason, events: list[AnyEvent]) -> None:
        """Take a resting order out of the book and report it canceled."""
        self._unlink(order)
        events.append(_OrderUpdate(order.order_id, order.account, order.client_order_id,
                                   _CANCELED, order.filled, 0, reason))


def _fillable(opposite: BookSide, limit_key: int, account: str, quantity: int,
              stp: SelfTradePrevention) -> bool:
    """Whether a fill-or-kill order would fill completely, walking the book as matching would.

    A resting order of the same account counts as a stop unless self-trade prevention
    is off (it trades) or ``expireMaker`` (it is canceled and matching goes on).
    """
    available = 0
    for level in opposite.levels_best_first():
        if level.key < limit_key:
            break
        for maker in level.live_orders():
            if stp is not _STP_NONE and maker.account == account:
                if stp is SelfTradePrevention.EXPIRE_MAKER:
                    continue
                return False
            available += maker.remaining
            if available >= quantity:
                return True
    return False


def _resting(side: BookSide) -> list[RestingOrder]:
    return [
        RestingOrder(order.order_id, order.account, order.client_order_id, order.side,
                     order.price, order.quantity, order.filled, order.remaining,
                     order.post_only, order.stp)
        for level in side.levels_best_first()
        for order in level.live_orders()
    ]


def _out_of_order(sequence: int, index: int, previous: int, previous_index: int) -> str:
    """Why a command is not the next: its (sequence, index) is not above the last one's.
    An index is named only where one is in play (a message of several commands)."""
    if sequence < previous or not (index or previous_index):
        return f"sequence {sequence} is not above {previous}"
    if previous_index >= _WHOLE:
        return f"sequence {sequence} is in the snapshot the engine started from"
    return (f"command {index} of sequence {sequence} is not above command "
            f"{previous_index} of it")


def _reject(command: Place | Cancel | Replace | CancelAll, code: RejectCode,
            reason: str) -> list[AnyEvent]:
    return [OrderRejected(
        command.account or "", getattr(command, "client_order_id", ""),
        getattr(command, "order_id", 0), code, reason, command_type(command),
    )]


def _level_event(level: Level) -> BookLevel:
    return _BookLevel(level.side, level.price, level.quantity, level.count)
