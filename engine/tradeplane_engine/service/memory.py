"""The engine's memory of finished orders, for status queries and a cancel's reply.

The book forgets an order once it is filled or canceled; a trader asking about it a
moment later (or retrying the cancel whose reply was lost) should still get it whole,
with the side, price and quantity it was accepted with. The engine keeps at least the
last ``RECENT_ORDERS`` finished orders and refused places; PostgreSQL keeps them all.

They are kept in segments of ``SEGMENT`` orders, the oldest dropped whole, rather than in
one table of them all: a table of a hundred thousand orders that is added to and taken
from with every order is now and then rebuilt whole by Python, and that took the engine's
loop 10 to 70 ms at a time under load (docs/performance.md, "Built: no stall in the
engine's memory of finished orders").
"""

from __future__ import annotations

from collections import deque

import msgspec

from tradeplane_engine.core import (
    AnyEvent,
    Engine,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectCode,
    TimeInForce,
)
from tradeplane_engine.wire import OrderRecord, PublicFormatter, refused_place

RECENT_ORDERS = 100_000
"""Finished orders the engine remembers at least, for status queries (PostgreSQL keeps
them all)."""
SEGMENT = 4_096
"""Finished orders per segment of the memory."""

_encode = msgspec.json.Encoder().encode
_TERMINAL = (OrderStatus.FILLED, OrderStatus.CANCELED)


class OrderMemory:
    """Finished and refused orders, by (account, order id) and by client order id."""

    def __init__(self, formatter: PublicFormatter) -> None:
        self.formatter = formatter
        self._segments: deque[_Segment] = deque([_Segment()])
        """Finished orders, oldest first, ``SEGMENT`` to a segment."""
        self._accepted: dict[int, OrderAccepted] = {}
        """How each order not yet finished was accepted (as far as ``remember`` has
        come), so that its finished state describes it whole: side, price, quantity."""
        self._replaced: dict[int, OrderReplaced] = {}
        """The last replace of each order not yet finished that was replaced."""
        self._rejections = 0

    def start_from(self, engine: Engine) -> None:
        """Remember how the orders resting in ``engine``'s book were accepted, as far as
        it says: a resting order is a GTC limit order, its price and quantity as its
        last replace left them (the replace itself is not in a snapshot)."""
        self._accepted = {
            order.order_id: OrderAccepted(
                order.order_id, order.account, order.client_order_id, order.side,
                OrderType.LIMIT, order.price, order.quantity, 0, TimeInForce.GTC,
                order.post_only, order.stp)
            for owner in engine.accounts.values() for order in owner.by_id.values()}
        self._replaced = {}

    def remember(self, events: list[AnyEvent]) -> None:
        """Keep the last state of finished and rejected orders for status queries.

        A finished order is described whole, with the terms it was accepted with (its
        price and quantity as its last replace left them). A rejected order is a refused
        place; the refusal of a cancel or a replace is not an order's state, even when it
        named the order by its client order id. Called for every command in command
        order, once, whatever the replica's role.
        """
        for event in events:
            if type(event) is OrderAccepted:
                self._accepted[event.order_id] = event
            elif type(event) is OrderReplaced:
                self._replaced[event.order_id] = event
            elif type(event) is OrderUpdate and event.status in _TERMINAL:
                self._keep(event.account, event.order_id, event.client_order_id,
                           self._finished_order(event))
            elif type(event) is OrderRejected and event.new_order and event.client_order_id:
                self._keep(event.account, 0, event.client_order_id, refused_place(
                    event.client_order_id, event.code, event.reason))

    def _finished_order(self, event: OrderUpdate) -> OrderRecord:
        accepted = self._accepted.pop(event.order_id, None)
        replaced = self._replaced.pop(event.order_id, None)
        reason = None if event.reason is None else event.reason.name.lower()
        if accepted is None:
            return OrderRecord(
                order_id=event.order_id, client_order_id=event.client_order_id,
                status=event.status.value,
                filled_quantity=self.formatter.quantity(event.filled_quantity),
                remaining_quantity="0", reason=reason)
        return self.formatter.order(
            event.order_id, event.client_order_id, event.status.value,
            side=accepted.side.value,
            price=replaced.price if replaced else accepted.price,
            quantity=replaced.quantity if replaced else accepted.quantity,
            quote_amount=accepted.quote_amount, filled=event.filled_quantity, remaining=0,
            order_type=accepted.order_type.value, time_in_force=accepted.time_in_force.value,
            post_only=accepted.post_only, stp=accepted.stp.value, reason=reason)

    def named_order(self, events: list[AnyEvent]) -> str | None:
        """For a command's reply: the order a cancel finished, or the finished order a
        cancel or replace named and found not open (301), as remembered — what the
        events do not say of it (side, price, quantity). None for anything else.

        A cancel-all's first order looks like a cancel's; its reply carries that order
        too, and the gateway does not use it."""
        if not events:
            return None
        first = events[0]
        record: OrderRecord | None = None
        if type(first) is OrderUpdate and first.status is OrderStatus.CANCELED:
            record = self._record(first.account, first.order_id)
        elif (type(first) is OrderRejected and first.code is RejectCode.UNKNOWN_ORDER
              and first.command in ("cancel", "replace")):
            record = self.finished(first.account, first.order_id, first.client_order_id)
        return None if record is None else _encode(record).decode()

    def finished(self, account: str, order_id: int,
                 client_order_id: str) -> OrderRecord | None:
        """A finished (or refused) order from memory, by id or by client order id (the
        last order under it)."""
        if not order_id and client_order_id:
            key = (account, client_order_id)
            order_id = next((segment.by_client_id[key] for segment in reversed(self._segments)
                             if key in segment.by_client_id), 0)
        return self._record(account, order_id) if order_id else None

    def _record(self, account: str, order_id: int) -> OrderRecord | None:
        key = (account, order_id)
        for segment in reversed(self._segments):  # the newest first: most asked for
            record = segment.by_id.get(key)
            if record is not None:
                return record
        return None

    def __len__(self) -> int:
        """Finished orders remembered."""
        return sum(len(segment.by_id) for segment in self._segments)

    def forget(self) -> None:
        """Forget every finished order, as a restart does (PostgreSQL still has them)."""
        self._segments = deque([_Segment()])

    def _keep(self, account: str, order_id: int, client_order_id: str,
              record: OrderRecord) -> None:
        self._rejections += 0 if order_id else 1
        key = (account, order_id or -self._rejections)  # a rejected order has no id
        segments = self._segments
        segment = segments[-1]
        if len(segment.by_id) >= SEGMENT:
            segment = _Segment()
            segments.append(segment)
            if len(segments) > -(-RECENT_ORDERS // SEGMENT) + 1:
                segments.popleft()  # the rest still hold RECENT_ORDERS or more
        segment.by_id[key] = record
        if client_order_id:
            segment.by_client_id[(account, client_order_id)] = key[1]


class _Segment:
    """Up to ``SEGMENT`` finished orders, by (account, order id) and by (account, client
    order id)."""

    __slots__ = ("by_client_id", "by_id")

    def __init__(self) -> None:
        self.by_id: dict[tuple[str, int], OrderRecord] = {}
        self.by_client_id: dict[tuple[str, str], int] = {}
