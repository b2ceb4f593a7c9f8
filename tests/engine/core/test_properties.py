"""Properties of the matching engine over random command streams, checked with hypothesis.

The streams (``streams.py``) mix every kind of order and command from three accounts at
prices a few ticks around 100, so orders cross, self-trade prevention triggers and many
commands are refused. After every command we check:

(a) quantity is conserved: for every order, quantity == filled + open + canceled as
    told by the events alone, fills agree with the trades that name the order, and the
    open quantity is what the book holds;
(b) the book is never crossed;
(c) price-time priority: every trade's maker is the best-priced, oldest resting order
    (an independent walk over the L3 book taken before the command), no liquidity is
    skipped, and FOK, post-only and STP behave as promised;
(d) the same commands give the same events and state hash, also after a trip through
    the wire encoding;
(e) snapshot, restore and continue gives what continuing without the snapshot gives;
(f) the L2 events describe exactly the book ``l2()`` and ``l3()`` show, one event per
    level a command touched, with the level as the command left it (never a state in
    between);
(g) no trading mode lets through what it should refuse;
(h) a cancel or cancel-all takes exactly the orders it names, no more, no fewer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.engine.core.streams import streams
from tradeplane_engine.core import (
    AnyCommand,
    AnyEvent,
    BookLevel,
    Cancel,
    CancelAll,
    CancelReason,
    Engine,
    L3Book,
    MarketSpec,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Place,
    SelfTradePrevention,
    SetTradingMode,
    Side,
    TimeInForce,
    Trade,
    TradingModeChanged,
)
from tradeplane_engine.core.market import TradingMode


def applied(spec: MarketSpec, commands: list[AnyCommand]
            ) -> Iterator[tuple[L3Book, AnyCommand, list[AnyEvent], Engine]]:
    """Apply the commands one by one: (L3 before, command, its events, the engine after)."""
    engine = Engine(spec)
    for command in commands:
        before = engine.l3()
        events = engine.apply(command)
        yield before, command, events, engine


# -- (a) quantity conservation -----------------------------------------------------------

@dataclass
class Ledger:
    """One order's quantities as told by the events alone."""

    account: str
    client_order_id: str
    side: Side
    price: int
    stp: SelfTradePrevention
    quantity: int
    """Lots; 0 for a market buy by quote amount."""
    quote_amount: int
    filled: int = 0
    spent: int = 0
    open: int = 0
    """Lots still to trade: resting in the book, or in flight while its command runs."""
    canceled: int = 0
    """Lots that left without a trade: canceled, killed, expired or reduced away."""
    done: bool = False

    @property
    def by_quote(self) -> bool:
        return self.quote_amount > 0


@dataclass
class Books:
    """Every order the events have told of, and the one in flight in the current command.

    Each order's ledger moves only on events about that order (its trades and its own
    updates), so every lot must be accounted for by the order's own events. Lots that
    self-trade prevention takes from makers are counted apart (``decremented``) and held
    against what the incoming order's own final update says a decrement took from it.
    """

    orders: dict[int, Ledger] = field(default_factory=dict)
    taker: Ledger | None = None
    trades: int = 0
    decremented: int = 0
    """Lots a decrement took from makers in this command: the taker must lose as many."""

    def record(self, events: list[AnyEvent]) -> None:
        self.taker = None
        self.decremented = 0
        for event in events:
            match event:
                case OrderAccepted():
                    self._accepted(event)
                case Trade():
                    self._trade(event)
                case OrderUpdate():
                    self._update(event)
                case OrderReplaced():
                    self._replaced(event)
                case OrderRejected():
                    assert len(events) == 1, "a rejection comes alone"
        taker = self.taker
        if taker is not None and not taker.done and not taker.by_quote:
            assert self.decremented == 0, (
                f"a decrement took {self.decremented} lots from an order that rests, "
                "and no update of its own said so")

    def _accepted(self, event: OrderAccepted) -> None:
        assert event.order_id not in self.orders
        assert event.order_id == len(self.orders) + 1, "order ids are 1, 2, 3..."
        self.taker = self.orders[event.order_id] = Ledger(
            event.account, event.client_order_id, event.side, event.price, event.stp,
            event.quantity, event.quote_amount, open=event.quantity,
        )

    def _trade(self, event: Trade) -> None:
        maker, taker = self.orders[event.maker_order_id], self.orders[event.taker_order_id]
        self.trades += 1
        assert event.trade_id == self.trades, "trade ids are 1, 2, 3..."
        assert taker is self.taker
        assert event.quantity > 0
        assert (maker.account, taker.account) == (event.maker_account, event.taker_account)
        assert maker.side is not taker.side
        assert event.aggressor_side is taker.side
        for order in (maker, taker):
            order.filled += event.quantity
            order.spent += event.quantity * event.price
            if not order.by_quote:
                order.open -= event.quantity
                assert order.open >= 0, f"order traded more than it had open: {order}"

    def _update(self, event: OrderUpdate) -> None:
        order = self.orders[event.order_id]
        assert not order.done
        assert (event.account, event.client_order_id) == (order.account, order.client_order_id)
        assert event.filled_quantity == order.filled, "fills must agree with the trades"
        if order is self.taker:
            self._taker_update(order, event)
            return
        if event.reason is CancelReason.STP:
            self._took_from_maker(order.open - event.remaining_quantity)
        if event.status is OrderStatus.PARTIALLY_FILLED:
            assert event.reason is None
            assert event.remaining_quantity == order.open > 0
            return
        if event.status is OrderStatus.REDUCED:
            assert event.reason is CancelReason.STP
            assert 0 < event.remaining_quantity < order.open
            order.canceled += order.open - event.remaining_quantity
            order.open = event.remaining_quantity
            return
        assert event.remaining_quantity == 0
        assert event.status is OrderStatus.FILLED or event.status is OrderStatus.CANCELED
        assert (event.reason is None) is (event.status is OrderStatus.FILLED)
        if event.status is OrderStatus.FILLED:
            assert order.open == 0, f"a maker filled with lots still open: {order}"
        order.canceled += order.open
        order.open = 0
        order.done = True

    def _taker_update(self, taker: Ledger, event: OrderUpdate) -> None:
        """The incoming order's one update when its matching ends: it must account for the
        lots a decrement took from it (``decremented``) as well as for its fills."""
        decremented = self.decremented if not taker.by_quote else 0
        if event.status is OrderStatus.PARTIALLY_FILLED:
            assert event.reason is None
            assert decremented == 0, "partiallyFilled hides the lots a decrement took"
            assert event.remaining_quantity == taker.open > 0
            return
        if event.status is OrderStatus.REDUCED:
            assert event.reason is CancelReason.STP
            assert decremented > 0, "reduced, but no decrement took anything"
            assert event.remaining_quantity == taker.open - decremented > 0
            taker.canceled += decremented
            taker.open = event.remaining_quantity
            self.decremented = 0  # accounted for
            return
        assert event.remaining_quantity == 0
        if event.status is OrderStatus.FILLED:
            assert event.reason is None
            assert taker.by_quote or taker.open == decremented, (
                f"filled with lots open that no decrement took: {taker}")
        else:
            assert event.status is OrderStatus.CANCELED
            assert event.reason is not None
            assert taker.by_quote or decremented <= taker.open
        taker.canceled += taker.open
        taker.open = 0
        taker.done = True

    def _took_from_maker(self, lots: int) -> None:
        """Self-trade prevention took ``lots`` from a maker; decrement takes them from the taker."""
        taker = self.taker
        assert taker is not None
        assert lots > 0
        if taker.stp is SelfTradePrevention.DECREMENT:
            self.decremented += lots

    def _replaced(self, event: OrderReplaced) -> None:
        order = self.orders[event.order_id]
        assert not order.done
        assert event.remaining_quantity > 0, f"replace left {event.remaining_quantity} lots open"
        assert event.quantity > order.filled
        if event.priority_kept:
            assert event.price == order.price
            assert event.quantity <= order.quantity
        # The new total counts the filled lots and those self-trade prevention took away.
        assert event.remaining_quantity == event.quantity - order.filled - order.canceled
        assert event.filled_quantity == order.filled, "the event says what traded so far"
        assert event.side is order.side
        order.price, order.quantity = event.price, event.quantity
        order.open = event.remaining_quantity
        self.taker = order

    def check(self, book: L3Book) -> None:
        resting = {o.order_id: o for o in (*book.bids, *book.asks)}
        for order_id, order in self.orders.items():
            assert order.canceled >= 0
            if order.by_quote:
                assert order.done
                assert order.spent <= order.quote_amount
                continue
            assert order.quantity == order.filled + order.open + order.canceled, order
            if order.done:
                assert order.open == 0
                assert order_id not in resting
            else:
                assert order_id in resting, f"#{order_id} neither done nor resting: {order}"
                assert order.open > 0
                assert resting[order_id].remaining == order.open
                assert resting[order_id].price == order.price
                assert resting[order_id].account == order.account
        assert set(resting) <= set(self.orders)


@given(streams())
def test_quantity_is_conserved(stream: tuple[MarketSpec, list[AnyCommand]]) -> None:
    books = Books()
    for _, _, events, engine in applied(*stream):
        books.record(events)
        books.check(engine.l3())


# -- (b) never crossed --------------------------------------------------------------------

@given(streams())
def test_the_book_is_never_crossed(stream: tuple[MarketSpec, list[AnyCommand]]) -> None:
    for _, _, _, engine in applied(*stream):
        book = engine.l2(depth=1_000)
        bids = [level.price for level in book.bids]
        asks = [level.price for level in book.asks]
        assert bids == sorted(set(bids), reverse=True)
        assert asks == sorted(set(asks))
        if bids and asks:
            assert bids[0] < asks[0], f"crossed: best bid {bids[0]}, best ask {asks[0]}"


# -- (c) price-time priority ----------------------------------------------------------------

@dataclass
class Resting:
    order_id: int
    account: str
    price: int
    remaining: int


@dataclass
class Taker:
    order_id: int
    account: str
    side: Side
    limit: int | None
    """The limit price; None for a market order."""
    stp: SelfTradePrevention
    time_in_force: TimeInForce
    quantity: int
    quote_amount: int


def _crosses(taker: Taker, price: int) -> bool:
    if taker.limit is None:
        return True
    return price <= taker.limit if taker.side is Side.BUY else price >= taker.limit


def _fok_fillable(taker: Taker, queue: list[Resting]) -> bool:
    """Whether a fill-or-kill order could fill completely against ``queue`` as it stood."""
    available = 0
    for maker in queue:
        if not _crosses(taker, maker.price):
            break
        if maker.account == taker.account and taker.stp is not SelfTradePrevention.NONE:
            if taker.stp is SelfTradePrevention.EXPIRE_MAKER:
                continue
            return False
        available += maker.remaining
        if available >= taker.quantity:
            return True
    return False


@dataclass
class Priority:
    """Checks each command's matching against the L3 book taken before it."""

    band: Fraction
    """The price band as a fraction of the reference price (0: none)."""
    reference: int
    """The reference price: the spec's, then the last trade's."""
    takers: dict[int, Taker] = field(default_factory=dict)
    arrival: dict[int, int] = field(default_factory=dict)
    """When each order last entered a queue (its time priority): the command's sequence."""

    @classmethod
    def of(cls, spec: MarketSpec) -> Priority:
        reference = 0 if spec.reference_price is None else spec.to_ticks(spec.reference_price)
        return cls(Fraction(Decimal(spec.price_band)) / 100, reference)

    def check(self, before: L3Book, command: AnyCommand, events: list[AnyEvent],
              engine: Engine) -> None:
        taker = self._taker(before, command, events)
        if taker is not None:
            self._check_matching(taker, before, events)
        self._check_queues(engine.l3())
        trades = [event.price for event in events if isinstance(event, Trade)]
        if trades:
            self.reference = trades[-1]

    def _market_limit(self, side: Side) -> int | None:
        """How far a market order may trade: the band's edge, or anywhere without a band."""
        if not (self.band and self.reference):
            return None
        if side is Side.BUY:
            return math.floor(self.reference * (1 + self.band))
        return math.ceil(self.reference * (1 - self.band))

    def _taker(self, before: L3Book, command: AnyCommand, events: list[AnyEvent]
               ) -> Taker | None:
        for event in events:
            if isinstance(event, OrderAccepted):
                assert isinstance(command, Place)
                taker = Taker(event.order_id, event.account, event.side,
                              event.price if event.order_type is OrderType.LIMIT
                              else self._market_limit(event.side),
                              event.stp, event.time_in_force, event.quantity,
                              event.quote_amount)
                self.takers[event.order_id] = taker
                self.arrival[event.order_id] = command.sequence
                return taker
            if isinstance(event, OrderReplaced):
                taker = self.takers[event.order_id]
                in_book = {o.order_id for o in (*before.bids, *before.asks)}
                assert event.order_id in in_book
                taker.limit = event.price
                taker.time_in_force = TimeInForce.GTC
                if not event.priority_kept:
                    self.arrival[event.order_id] = command.sequence
                return taker
        return None

    def _check_matching(self, taker: Taker, before: L3Book, events: list[AnyEvent]) -> None:
        queue = [Resting(o.order_id, o.account, o.price, o.remaining)
                 for o in (before.asks if taker.side is Side.BUY else before.bids)]
        fok_fillable = _fok_fillable(taker, queue)
        used = 0  # quote a market buy used up: its trades, and lots a decrement took away
        trades = 0
        final: OrderUpdate | None = None
        for event in events:
            if isinstance(event, Trade):
                assert queue, "a trade with an empty opposite side"
                head = queue[0]
                assert event.maker_order_id == head.order_id, (
                    f"trade with #{event.maker_order_id}, but #{head.order_id} is first")
                assert event.price == head.price
                assert _crosses(taker, event.price), "traded beyond the limit or the band"
                assert event.quantity <= head.remaining
                assert (head.account != taker.account
                        or taker.stp is SelfTradePrevention.NONE), "self-trade not prevented"
                head.remaining -= event.quantity
                used += event.quantity * event.price
                trades += 1
                if not head.remaining:
                    queue.pop(0)
            elif isinstance(event, OrderUpdate) and event.order_id == taker.order_id:
                final = event
            elif isinstance(event, OrderUpdate) and event.reason is CancelReason.STP:
                assert queue, "self-trade prevention with an empty opposite side"
                head = queue[0]
                assert event.order_id == head.order_id, "STP must act on the first order in line"
                assert head.account == taker.account
                assert taker.stp in (SelfTradePrevention.EXPIRE_MAKER,
                                     SelfTradePrevention.EXPIRE_BOTH,
                                     SelfTradePrevention.DECREMENT)
                if taker.stp is SelfTradePrevention.DECREMENT:
                    used += (head.remaining - event.remaining_quantity) * head.price
                head.remaining = event.remaining_quantity
                if not head.remaining:
                    queue.pop(0)
        reason = None if final is None else final.reason
        if reason in (CancelReason.POST_ONLY_WOULD_CROSS, CancelReason.MODE):
            assert queue, "canceled as crossing an empty side"
            assert _crosses(taker, queue[0].price), "canceled as crossing, but it does not cross"
        if taker.time_in_force is TimeInForce.FOK:
            assert (reason is CancelReason.FOK_UNFILLED) is not fok_fillable
            if reason is CancelReason.FOK_UNFILLED:
                assert trades == 0
        rests_or_gives_up = (final is None or final.status is OrderStatus.PARTIALLY_FILLED
                             or reason in (CancelReason.IOC_REMAINDER,
                                           CancelReason.MARKET_REMAINDER))
        if rests_or_gives_up and queue:
            head = queue[0]
            affordable = not taker.quote_amount or head.price <= taker.quote_amount - used
            assert not (_crosses(taker, head.price) and affordable), (
                f"#{taker.order_id} stopped before #{head.order_id} it could trade with")

    def _check_queues(self, book: L3Book) -> None:
        """L3 must list orders by price, then by when they (last) entered the queue."""
        bids = [(-o.price, self.arrival[o.order_id]) for o in book.bids]
        asks = [(o.price, self.arrival[o.order_id]) for o in book.asks]
        for queue in (bids, asks):
            assert queue == sorted(queue), "not in price-time order"
            assert len(set(queue)) == len(queue)


@given(streams())
def test_price_time_priority(stream: tuple[MarketSpec, list[AnyCommand]]) -> None:
    spec, commands = stream
    priority = Priority.of(spec)
    for before, command, events, engine in applied(spec, commands):
        priority.check(before, command, events, engine)


# -- (d) determinism ------------------------------------------------------------------------

@given(streams())
def test_same_commands_same_events_and_state(stream: tuple[MarketSpec,
                                                           list[AnyCommand]]) -> None:
    spec, commands = stream
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(commands), type=list[AnyCommand])
    assert wire == commands
    first, second = Engine(spec), Engine(spec)
    for original, decoded in zip(commands, wire, strict=True):
        events = first.apply(original)
        assert second.apply(decoded) == events
        assert msgspec.json.decode(msgspec.json.encode(events), type=list[AnyEvent]) == events
    assert first.state_hash() == second.state_hash()
    assert first.snapshot() == second.snapshot()


# -- (e) snapshot and restore -----------------------------------------------------------------

@given(streams(), st.data())
def test_snapshot_restore_continue(stream: tuple[MarketSpec, list[AnyCommand]],
                                   data: st.DataObject) -> None:
    spec, commands = stream
    split = data.draw(st.integers(0, len(commands)), label="split")
    straight, interrupted = Engine(spec), Engine(spec)
    for command in commands[:split]:
        assert interrupted.apply(command) == straight.apply(command)
    snapshot = interrupted.snapshot()
    restored = Engine.restore(snapshot)
    assert restored.snapshot() == snapshot
    assert restored.l3() == straight.l3()
    assert restored.l2(depth=1_000) == straight.l2(depth=1_000)
    for command in commands[split:]:
        assert restored.apply(command) == straight.apply(command)
    assert restored.state_hash() == straight.state_hash()


# -- (f) L2 events against l2() and l3() ------------------------------------------------------

@given(streams())
def test_level_events_describe_the_book(stream: tuple[MarketSpec, list[AnyCommand]]) -> None:
    levels: dict[tuple[Side, int], tuple[int, int]] = {}
    for _, _, events, engine in applied(*stream):
        book = engine.l2(depth=1_000)
        after = {(side, level.price): (level.quantity, level.order_count)
                 for side, side_levels in ((Side.BUY, book.bids), (Side.SELL, book.asks))
                 for level in side_levels}
        told = [(event.side, event.price) for event in events if isinstance(event, BookLevel)]
        assert len(told) == len(set(told)), f"a level told twice in one command: {told}"
        for event in events:
            if isinstance(event, BookLevel):
                # Only states the book really reaches: what the level holds after the command.
                assert (event.quantity, event.order_count) == after.get(
                    (event.side, event.price), (0, 0)), f"a level that never existed: {event}"
                if event.order_count:
                    levels[event.side, event.price] = event.quantity, event.order_count
                else:
                    assert event.quantity == 0
                    levels.pop((event.side, event.price), None)
        assert levels == after
        orders = engine.l3()
        from_orders: dict[tuple[Side, int], tuple[int, int]] = {}
        for side, side_orders in ((Side.BUY, orders.bids), (Side.SELL, orders.asks)):
            for order in side_orders:
                quantity, count = from_orders.get((side, order.price), (0, 0))
                from_orders[side, order.price] = quantity + order.remaining, count + 1
        assert from_orders == after
        top = engine.l2(depth=2)
        assert (top.bids, top.asks) == (book.bids[:2], book.asks[:2])


# -- (g) trading modes ----------------------------------------------------------------------

@given(streams())
def test_trading_modes_hold(stream: tuple[MarketSpec, list[AnyCommand]]) -> None:
    spec, commands = stream
    mode = spec.trading_mode
    for _, command, events, engine in applied(spec, commands):
        trades = [event for event in events if isinstance(event, Trade)]
        accepted = [event for event in events if isinstance(event, OrderAccepted)]
        if mode is TradingMode.POST_ONLY:
            assert not trades, "a trade in a postOnly market"
            assert all(event.order_type is OrderType.LIMIT
                       and event.time_in_force is TimeInForce.GTC for event in accepted)
        elif mode is not TradingMode.OPEN and not isinstance(command, SetTradingMode):
            assert not trades
            assert not accepted
            assert not any(isinstance(event, OrderReplaced) for event in events)
            if mode is TradingMode.HALTED and not (isinstance(command, CancelAll)
                                                   and command.account is None):
                assert all(isinstance(event, OrderRejected) for event in events)
        for event in events:
            if isinstance(event, TradingModeChanged):
                assert event.previous is mode
                mode = event.mode
        assert engine.mode is mode


# -- (h) cancels ------------------------------------------------------------------------------

@given(streams())
def test_cancels_take_exactly_the_orders_they_name(stream: tuple[MarketSpec,
                                                                 list[AnyCommand]]) -> None:
    for before, command, events, _ in applied(*stream):
        if not isinstance(command, Cancel | CancelAll) or any(
                isinstance(event, OrderRejected) for event in events):
            continue
        owners = {order.order_id: (order.account, side)
                  for side, orders in ((Side.BUY, before.bids), (Side.SELL, before.asks))
                  for order in orders}
        updates = [event for event in events if isinstance(event, OrderUpdate)]
        admin = isinstance(command, CancelAll) and command.account is None
        assert all(update.status is OrderStatus.CANCELED for update in updates)
        assert all(update.reason is (CancelReason.ADMIN if admin else CancelReason.USER)
                   for update in updates)
        canceled = [update.order_id for update in updates]
        if isinstance(command, Cancel):
            [order_id] = canceled
            assert owners[order_id][0] == command.account
            assert command.order_id in (0, order_id)
        else:
            assert canceled == sorted(
                order_id for order_id, (account, side) in owners.items()
                if command.account in (None, account) and command.side in (None, side))
