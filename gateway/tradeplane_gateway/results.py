"""What a command did, summed up for its sender: the reply to a command from its
engine's result, with the order's state and its fills."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.core.commands import Cancel, Place, Replace
from tradeplane_engine.core.events import OrderRejected, open_status
from tradeplane_engine.core.market import format_decimal
from tradeplane_engine.wire import PublicFormatter, decode_events
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.protocol import (
    ErrorBody,
    Fill,
    OrderState,
    Reply,
    encode_reply,
    error_reply,
)
from tradeplane_gateway.validation import Submission


def result_reply(work: Submission, result: bytes, named: bytes | None) -> bytes | None:
    """The reply to ``work``'s command from its engine's result (its events batch), and
    ``named``, the finished order a cancel or replace named as the engine remembers it
    (the result's ``Tp-Order``); None when it takes PostgreSQL's word on that order (the
    engine found it not open and no longer remembers it)."""
    batch = decode_events(result)
    command = work.command
    client_order_id = getattr(command, "client_order_id", None) or None
    order_named = msgspec.json.decode(named, type=OrderState) if named is not None else None
    for event in batch.events:
        if type(event) is OrderRejected and event.account == work.account:
            if event.code is RejectCode.UNKNOWN_ORDER and isinstance(command,
                                                                     (Cancel, Replace)):
                if order_named is None:
                    return None
                return not_open_reply(work, batch.sequence, batch.timestamp, order_named)
            return encode_reply(Reply(
                ok=False, market=batch.market, sequence=batch.sequence,
                timestamp=batch.timestamp, client_order_id=client_order_id,
                error=ErrorBody(int(event.code), event.code.name, event.reason)))
    formatter = work.market.formatter
    events = [update for event in batch.events
              if (update := formatter.order_event(event, work.account)) is not None]
    order: OrderState | None = None
    fills: list[Fill] = []
    if isinstance(command, Place):
        order, fills = place_summary(command, events, formatter)
    elif isinstance(command, (Cancel, Replace)):
        order, fills = reference_summary(events, order_named)
    return encode_reply(Reply(
        ok=True, market=batch.market, sequence=batch.sequence, timestamp=batch.timestamp,
        client_order_id=client_order_id, order=order, fills=fills, events=events))


def not_open_reply(work: Submission, sequence: int | None, timestamp: int | None,
                   order: OrderState) -> bytes:
    """A cancel or replace of an order that exists but is no longer open.

    A cancel is answered ``ok`` with the order as it is, and no events: what a cancel
    is for holds, so a retried cancel (whose first reply was lost) gets the answer the
    first one got. A replace cannot do what it asks: ``ORDER_NOT_OPEN``, with the order.
    """
    name = work.market.definition.name
    command = work.command
    client_order_id = getattr(command, "client_order_id", None) or None
    if isinstance(command, Cancel):
        return encode_reply(Reply(ok=True, market=name, sequence=sequence,
                                  timestamp=timestamp, client_order_id=client_order_id,
                                  order=order))
    return error_reply(
        int(EdgeCode.ORDER_NOT_OPEN), EdgeCode.ORDER_NOT_OPEN.name,
        f"order {order.order_id or order.client_order_id} is {order.status}, no longer "
        "open: nothing was replaced", market=name, sequence=sequence,
        client_order_id=client_order_id, order=order)


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
