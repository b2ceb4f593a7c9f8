"""What a command did, summed up for its sender: the order's state and its fills."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradeplane_engine.core.commands import Place
from tradeplane_engine.core.events import open_status
from tradeplane_engine.core.market import format_decimal
from tradeplane_engine.wire import PublicFormatter
from tradeplane_gateway.protocol import Fill, OrderState


def place_summary(command: Place, events: list[dict[str, Any]],
                  formatter: PublicFormatter) -> tuple[OrderState | None, list[Fill]]:
    """The new order's state after its command, from the sender's events."""
    accepted = next((event for event in events if event["type"] == "accepted"), None)
    if accepted is None:
        return None, []
    order_id = accepted["orderId"]
    fills = _fills(events, order_id)
    final = _last_update(events, order_id)
    if final is None:  # rested untouched
        return OrderState(order_id, command.client_order_id, "new", "0",
                          formatter.quantity(command.quantity), side=command.side.value,
                          price=accepted.get("price"), quantity=accepted.get("quantity")), fills
    status, reason = _state(final)
    return OrderState(order_id, command.client_order_id, status,
                      final["filledQuantity"], final["remainingQuantity"],
                      side=command.side.value, price=accepted.get("price"),
                      quantity=accepted.get("quantity"), reason=reason), fills


def reference_summary(events: list[dict[str, Any]]) -> tuple[OrderState | None, list[Fill]]:
    """The state of the order a cancel or replace named."""
    named = next((event for event in events if event["type"] in ("replaced", "orderUpdate")),
                 None)
    if named is None:
        return None, []
    order_id = named["orderId"]
    fills = _fills(events, order_id)
    final = _last_update(events, order_id)
    if named["type"] == "replaced" and (final is None or final is named):
        return OrderState(order_id, named["clientOrderId"],
                          "partiallyFilled" if named["remainingQuantity"] != named["quantity"]
                          else "new",
                          filled_quantity=format_decimal(Decimal(named["quantity"])
                                                         - Decimal(named["remainingQuantity"])),
                          remaining_quantity=named["remainingQuantity"],
                          price=named["price"], quantity=named["quantity"]), fills
    assert final is not None
    status, reason = _state(final)
    return OrderState(order_id, final["clientOrderId"], status,
                      final["filledQuantity"], final["remainingQuantity"],
                      reason=reason), fills


def _state(update: dict[str, Any]) -> tuple[str, str | None]:
    """An order's status and reason from its last update.

    ``reduced`` (a self-trade decrement took some of it) is an event, not a state: the
    order is still open, ``new`` or ``partiallyFilled`` as a status query would say; the
    update itself is among the reply's events.
    """
    if update["status"] == "reduced":
        return open_status(Decimal(update["filledQuantity"]) != 0), None
    return update["status"], update.get("reason")


def _fills(events: list[dict[str, Any]], order_id: int) -> list[Fill]:
    return [Fill(event["tradeId"], event["price"], event["quantity"], event["role"])
            for event in events if event["type"] == "trade" and event["orderId"] == order_id]


def _last_update(events: list[dict[str, Any]], order_id: int) -> dict[str, Any] | None:
    for event in reversed(events):
        if event["type"] == "orderUpdate" and event["orderId"] == order_id:
            update: dict[str, Any] = event
            return update
    return None
