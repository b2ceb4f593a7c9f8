"""Drive the Liquibook C++ matching engine on a benchmark workload.

Why this exists: Liquibook is a well-known open-source C++ limit order book,
and its PyPI binding (``liquibook``, a SWIG wrapper) gives us a native
reference point that can be fed exactly the same command stream as our own
engine.  Comparing against it tells us whether our throughput is in the same
league as a compiled matching engine, and comparing the fill figures tells us
whether both engines agree on what traded.

The driver keeps the comparison fair:

* it uses ``DepthOrderBook`` (price-time matching plus aggregated depth
  maintenance), which does the same kind of work as our engine;
* every order object is built before the clock starts, so the timed loop
  contains nothing but ``add`` / ``cancel`` calls on the book;
* fills are only summarised after the clock stops.

Binding quirks this module works around (observed with ``liquibook`` 2.0.1):

* Order pointers are ``std::shared_ptr<SimpleOrder>``; the book keeps orders
  alive itself, but we hold them too so nothing is built or freed in the loop.
* A Python ``OrderListener`` must implement every pure virtual method
  (``on_accept``, ``on_reject``, ``on_fill``, ``on_cancel``,
  ``on_cancel_reject``, ``on_replace``, ``on_replace_reject``).  A missing one
  makes the C++ side catch a director exception, print "Caught exception
  during callback" and return to Python with an error set (``SystemError``).
* ``on_fill(order, matched_order, qty, price)`` receives the *inbound* order
  first and the resting order second; the price is the resting order's price.
* The book tracks open quantity in its own internal tracker, so matching is
  correct without a listener.  A ``SimpleOrder``'s own ``open_qty`` /
  ``filled_qty`` / ``state`` only change when the listener calls
  ``order.fill(...)``: ``DepthOrderBook`` (unlike the C++-only
  ``SimpleOrderBook``) never updates the order objects.  Our listener does
  call ``fill`` on both orders, as ``SimpleOrderBook`` does, so the order
  objects stay truthful.
* Immediate-or-cancel must be passed to ``add(order, oc_immediate_or_cancel)``.
  The condition given to the ``SimpleOrder`` constructor is not picked up by
  the book (the tracker constructor ORs it into a local copy), so such an
  order would otherwise rest like a good-till-cancel order.  We set both.
* Cancelling an order that is no longer resting (fully filled, or an IOC
  order) is harmless: the book reports ``on_cancel_reject(order, "not
  found")`` and nothing changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tradeplane_engine.workload import Workload  # the format is documented there

BUY = 1
SELL = 2

_CANCEL = -1
"""Marker in the prepared plan meaning "cancel this order" instead of add."""


@dataclass(frozen=True)
class LiquibookResult:
    """Figures from one run of Liquibook over a workload.

    ``trades`` and ``traded_quantity`` come from the fills the order listener
    recorded.  With ``listener=False`` there is no listener and the book gives
    no other way to learn what traded, so both are reported as 0.
    """

    seconds: float
    """Wall time of the timed loop only (``time.perf_counter``)."""
    commands: int
    """Number of workload commands sent to the book."""
    trades: int
    """Fills recorded by the listener, one per match."""
    traded_quantity: int
    """Sum of fill quantities, in lots."""


def _make_listener(lb: Any) -> Any:
    """Build an order listener that records every fill as ``(qty, price)``.

    The class is created here, after the lazy import, so this module can be
    imported (e.g. for type checking or test collection) where the binding is
    not installed.  Every pure virtual method is implemented because the
    binding fails otherwise; the non-fill ones do nothing to keep the
    callback cost as low as Python allows.
    """

    class FillRecorder(lb.OrderListener):  # type: ignore[misc]
        """Order listener that records fills and keeps order objects in sync."""

        def __init__(self) -> None:
            lb.OrderListener.__init__(self)
            self.fills: list[tuple[int, int]] = []

        def on_accept(self, order: Any) -> None:
            """Ignore accepts; required because the method is pure virtual."""

        def on_reject(self, order: Any, reason: str) -> None:
            """Ignore rejects; required because the method is pure virtual."""

        def on_fill(self, order: Any, matched_order: Any, fill_qty: int, fill_price: int) -> None:
            """Record the fill and apply it to both orders.

            The book has already updated its own tracker; calling ``fill``
            keeps the ``SimpleOrder`` objects consistent, mirroring what
            Liquibook's own ``SimpleOrderBook`` does in C++.
            """
            cost = fill_qty * fill_price
            order.fill(fill_qty, cost, 0)
            matched_order.fill(fill_qty, cost, 0)
            self.fills.append((fill_qty, fill_price))

        def on_cancel(self, order: Any) -> None:
            """Ignore cancels; required because the method is pure virtual."""

        def on_cancel_reject(self, order: Any, reason: str) -> None:
            """Ignore cancels of orders no longer resting (e.g. filled)."""

        def on_replace(self, order: Any, size_delta: int, new_price: int) -> None:
            """Ignore replaces (never issued); the method is pure virtual."""

        def on_replace_reject(self, order: Any, reason: str) -> None:
            """Ignore replace rejects (never issued); the method is pure virtual."""

    return FillRecorder()


def _prepare(lb: Any, workload: Workload) -> list[tuple[Any, int]]:
    """Turn the workload into ``(order, condition)`` pairs ready to replay.

    All ``SimpleOrder`` objects are built here so that the timed loop does no
    allocation of its own.  ``condition`` is the ``OrderConditions`` value to
    pass to ``add`` or ``_CANCEL`` for a cancel of that order.
    """
    gtc = lb.oc_no_conditions
    ioc = lb.oc_immediate_or_cancel
    orders: list[Any] = []
    plan: list[tuple[Any, int]] = []
    for kind, order_id, side, price, quantity in workload:
        if kind == "cancel":
            if not 1 <= order_id <= len(orders):
                msg = f"cancel of unknown order id {order_id}"
                raise ValueError(msg)
            plan.append((orders[order_id - 1], _CANCEL))
            continue
        if kind not in ("limit", "ioc"):
            msg = f"unknown command kind {kind!r}"
            raise ValueError(msg)
        if order_id != len(orders) + 1:
            msg = f"order id {order_id} out of sequence (expected {len(orders) + 1})"
            raise ValueError(msg)
        if side not in (BUY, SELL) or price <= 0 or quantity <= 0:
            msg = f"invalid order {(kind, order_id, side, price, quantity)!r}"
            raise ValueError(msg)
        condition = ioc if kind == "ioc" else gtc
        order = lb.SimpleOrder(side == BUY, price, quantity, 0, condition)
        orders.append(order)
        plan.append((order, condition))
    return plan


def run_liquibook(workload: Workload, *, listener: bool = True) -> LiquibookResult:
    """Replay ``workload`` on a Liquibook ``DepthOrderBook`` and time it.

    With ``listener=True`` an order listener records fills (that is part of
    the timed work, as any real engine must report its fills).  With
    ``listener=False`` the book runs bare, which measures the C++ matching
    plus binding call overhead alone; trades and traded quantity are then 0
    because they cannot be observed.
    """
    import liquibook as lb  # type: ignore[import-untyped, import-not-found, unused-ignore]

    plan = _prepare(lb, workload)
    book = lb.DepthOrderBook()
    recorder = _make_listener(lb) if listener else None
    if recorder is not None:
        book.set_order_listener(recorder)

    add = book.add
    cancel = book.cancel
    cancel_marker = _CANCEL
    start = time.perf_counter()
    for order, condition in plan:
        if condition == cancel_marker:
            cancel(order)
        else:
            add(order, condition)
    seconds = time.perf_counter() - start

    trades = 0
    traded_quantity = 0
    if recorder is not None:
        fills: list[tuple[int, int]] = recorder.fills
        trades = len(fills)
        traded_quantity = sum(qty for qty, _ in fills)
    # Detach the listener before either object goes away, so the book never
    # holds a pointer to a collected Python object.
    book.set_order_listener(None)
    return LiquibookResult(
        seconds=seconds,
        commands=len(plan),
        trades=trades,
        traded_quantity=traded_quantity,
    )
