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
    terms: dict[str, Any] = {"side": command.side.value, "price": accepted.get("price"),
                             "quantity": accepted.get("quantity"),
                             "quote_amount": accepted.get("quoteAmount")}
    final = _last_update(events, order_id)
    if final is None:  # rested untouched
        return OrderState(order_id=order_id, client_order_id=command.client_order_id,
                          status="new", filled_quantity="0",
                          remaining_quantity=formatter.quantity(command.quantity),
                          **terms), fills
    status, reason = _state(final)
    return OrderState(order_id=order_id, client_order_id=command.client_order_id,
                      status=status, filled_quantity=final["filledQuantity"],
                      remaining_quantity=final["remainingQuantity"], reason=reason,
                      **terms), fills


def reference_summary(events: list[dict[str, Any]], named: OrderState | None = None,
                      ) -> tuple[OrderState | None, list[Fill]]:
    """The state of the order a cancel or replace named.

    A replace's events describe the order whole (``replaced`` has its side, price,
    quantity and what was filled); a cancel's do not say its side, price or quantity,
    so the engine sends its finished state beside them (``named``, from the result's
    ``Tp-Order`` header) and that is the answer."""
    first = next((event for event in events if event["type"] in ("replaced", "orderUpdate")),
                 None)
    if first is None:
        return None, []
    order_id = first["orderId"]
    fills = _fills(events, order_id)
    if first["type"] == "orderUpdate" and named is not None and named.order_id == order_id:
        return named, fills
    final = _last_update(events, order_id)
    if first["type"] == "replaced":
        filled = first.get("filledQuantity")
        if filled is None:  # an engine from before the event said it
            filled = format_decimal(Decimal(first["quantity"])
                                    - Decimal(first["remainingQuantity"]))
        terms: dict[str, Any] = {"side": first.get("side"), "price": first["price"],
                                 "quantity": first["quantity"]}
        if final is None:
            return OrderState(order_id=order_id, client_order_id=first["clientOrderId"],
                              status=open_status(Decimal(filled) != 0),
                              filled_quantity=filled,
                              remaining_quantity=first["remainingQuantity"], **terms), fills
    else:
        terms = {}
        final = final or first
    status, reason = _state(final)
    return OrderState(order_id=order_id, client_order_id=final["clientOrderId"],
                      status=status, filled_quantity=final["filledQuantity"],
                      remaining_quantity=final["remainingQuantity"], reason=reason,
                      **terms), fills


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
