"""Rows for PostgreSQL from events messages: pure functions, no I/O.

One batch of events messages becomes rows for the journal, order history, trades and
rejections (appended), new orders (inserted) and changes to older orders (applied
with one UPDATE). Within a batch an order's changes are folded into its final state.

An order's ``status`` in ``orders`` is its state, as a status query shows it: ``new``
or ``partiallyFilled`` while open, then ``filled`` or ``canceled``. A ``reduced``
update (self-trade decrement) is an event, kept as such in ``order_history``; the
order it reduced is still open, so its row says ``new`` or ``partiallyFilled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tradeplane_engine.core.events import (
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderUpdate,
    Trade,
    open_status,
)
from tradeplane_engine.wire import EventBatch

JOURNAL = ("market", "sequence", "index", "stream_sequence", "sequenced_at", "events")
ORDERS = ("market", "order_id", "account", "client_order_id", "side", "order_type",
          "time_in_force", "post_only", "price", "quantity", "quote_amount", "status",
          "filled", "remaining", "reason", "created_sequence", "updated_sequence")
ORDER_CHANGES = ("market", "order_id", "status", "filled", "remaining", "price", "quantity",
                 "reason", "updated_sequence")
HISTORY = ("market", "sequence", "index", "position", "order_id", "kind", "status", "filled",
           "remaining", "price", "quantity", "reason")
TRADES = ("market", "trade_id", "sequence", "traded_at", "price", "quantity", "aggressor_side",
          "maker_order_id", "maker_account", "taker_order_id", "taker_account")
REJECTIONS = ("market", "sequence", "index", "position", "account", "client_order_id",
              "order_id", "code", "reason", "command")
QUARANTINE = ("market", "stream_sequence", "payload", "reason")


@dataclass
class Rows:
    journal: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    trades: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[tuple[Any, ...]] = field(default_factory=list)
    quarantined: list[tuple[Any, ...]] = field(default_factory=list)
    """Messages that could not be read: (market, stream sequence, payload, why)."""
    traces: list[tuple[str, int]] = field(default_factory=list)
    """(traceparent, command sequence) of the traced commands: the recorder's spans."""
    new_orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Orders accepted in this batch, in their state at its end (keyed by order id)."""
    changes: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Orders accepted earlier: only what changed (None: unchanged)."""

    def add(self, stream_sequence: int, batch: EventBatch, payload: str) -> None:
        market, sequence, index = batch.market, batch.sequence, batch.index
        self.journal.append((market, sequence, index, stream_sequence, batch.timestamp,
                             payload))
        for position, event in enumerate(batch.events):
            if isinstance(event, OrderAccepted):
                self.new_orders[event.order_id] = {
                    "market": market, "order_id": event.order_id, "account": event.account,
                    "client_order_id": event.client_order_id, "side": event.side.value,
                    "order_type": event.order_type.value,
                    "time_in_force": event.time_in_force.value, "post_only": event.post_only,
                    "price": event.price, "quantity": event.quantity,
                    "quote_amount": event.quote_amount, "status": "new", "filled": 0,
                    "remaining": event.quantity, "reason": None, "created_sequence": sequence,
                    "updated_sequence": sequence,
                }
                self.history.append((market, sequence, index, position, event.order_id,
                                     "accepted", "new", 0, event.quantity, event.price,
                                     event.quantity, None))
            elif isinstance(event, OrderUpdate):
                reason = event.reason.name.lower() if event.reason is not None else None
                if event.status is OrderStatus.REDUCED:
                    # An event, not a state: the order is open, new or partially filled.
                    self._change(market, event.order_id, sequence,
                                 status=open_status(event.filled_quantity),
                                 filled=event.filled_quantity,
                                 remaining=event.remaining_quantity)
                else:
                    self._change(market, event.order_id, sequence, status=event.status.value,
                                 filled=event.filled_quantity,
                                 remaining=event.remaining_quantity, reason=reason)
                state = self._state(event.order_id)
                self.history.append((market, sequence, index, position, event.order_id,
                                     "orderUpdate", event.status.value, event.filled_quantity,
                                     event.remaining_quantity, state.get("price") or 0,
                                     state.get("quantity") or 0, reason))
            elif isinstance(event, OrderReplaced):
                self._change(market, event.order_id, sequence, price=event.price,
                             quantity=event.quantity, remaining=event.remaining_quantity)
                state = self._state(event.order_id)
                # Events stored before the replace said what was filled: what is not open.
                filled = (event.filled_quantity if event.filled_quantity is not None
                          else event.quantity - event.remaining_quantity)
                self.history.append((market, sequence, index, position, event.order_id,
                                     "replaced", state.get("status") or "replaced", filled,
                                     event.remaining_quantity, event.price, event.quantity,
                                     None))
            elif isinstance(event, Trade):
                self.trades.append((market, event.trade_id, sequence, batch.timestamp,
                                    event.price, event.quantity, event.aggressor_side.value,
                                    event.maker_order_id, event.maker_account,
                                    event.taker_order_id, event.taker_account))
            elif isinstance(event, OrderRejected):
                self.rejections.append((market, sequence, index, position, event.account,
                                        event.client_order_id, event.order_id, int(event.code),
                                        event.reason, event.command or None))

    def _state(self, order_id: int) -> dict[str, Any]:
        return self.new_orders.get(order_id) or self.changes.get(order_id) or {}

    def _change(self, market: str, order_id: int, sequence: int, **values: Any) -> None:
        target = self.new_orders.get(order_id)
        if target is None:
            target = self.changes.setdefault(order_id, {
                "market": market, "order_id": order_id, "status": None, "filled": None,
                "remaining": None, "price": None, "quantity": None, "reason": None,
            })
        target.update(values)
        target["updated_sequence"] = sequence

    def order_rows(self) -> list[tuple[Any, ...]]:
        return [tuple(order[column] for column in ORDERS) for order in self.new_orders.values()]

    def change_rows(self) -> list[tuple[Any, ...]]:
        return [tuple(change[column] for column in ORDER_CHANGES)
                for change in self.changes.values()]
