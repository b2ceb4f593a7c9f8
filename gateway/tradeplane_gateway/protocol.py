"""The public request/reply protocol: what a trader sends and what comes back.

Every message is JSON. Requests are validated strictly (unknown fields, wrong types,
integers out of their range and numbers where decimal strings belong are refused);
prices and quantities are decimal strings, never JSON numbers. docs/protocol.md
describes all of it with examples. The order and fill a reply carries are the wire
module's ``OrderState`` and ``Fill``: one shape for the engine's answers, the recorder's
and the gateway's replies.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from tradeplane_engine.core.commands import OrderType, SelfTradePrevention, Side, TimeInForce
from tradeplane_engine.wire import Fill as Fill
from tradeplane_engine.wire import OrderState as OrderState

MAX_PAYLOAD = 4096
"""Largest request the gateway reads, in bytes."""

MAX_ID = 2**53 - 1
"""Largest order id or trade id a request may name: exact in every JSON reader,
JavaScript's too (ids are given from 1 up, one per order or trade, so none gets there)."""

MAX_TRADES_PAGE = 500
"""Most trades one ``trades`` reply holds."""

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
"""An order id or a trade id: 1 to ``MAX_ID``. Checked as the request is decoded, so an
id no store could hold (PostgreSQL's bigint) never leaves the gateway."""

PageSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_TRADES_PAGE)]

_CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")


def is_client_order_id(value: str) -> bool:
    return bool(_CLIENT_ORDER_ID.match(value))


class ResponseMode(StrEnum):
    ACK = "ack"
    """Reply once the command is sequenced (in the market's command stream)."""
    RESULT = "result"
    """Reply once the engine applied it, with its outcome and fills (the default)."""


class Request(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    market: str


class PlaceRequest(Request, kw_only=True):
    side: Side
    type: OrderType = OrderType.LIMIT
    quantity: str | None = None
    price: str | None = None
    quote_amount: str | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_MAKER
    client_order_id: str | None = None
    response: ResponseMode = ResponseMode.RESULT


class CancelRequest(Request, kw_only=True):
    order_id: Id | None = None
    client_order_id: str | None = None
    response: ResponseMode = ResponseMode.RESULT


class ReplaceRequest(Request, kw_only=True):
    order_id: Id | None = None
    client_order_id: str | None = None
    price: str | None = None
    quantity: str | None = None
    """The new total quantity, filled part included (so a retried replace is harmless)."""
    response: ResponseMode = ResponseMode.RESULT


class CancelAllRequest(Request, kw_only=True):
    side: Side | None = None
    response: ResponseMode = ResponseMode.RESULT


class StatusRequest(Request, kw_only=True):
    order_id: Id | None = None
    client_order_id: str | None = None


class OpenOrdersRequest(Request, kw_only=True):
    pass


class TradesRequest(Request, kw_only=True):
    before: Id | None = None
    """Only trades with a smaller trade id: the ``next`` of the previous page."""
    limit: PageSize = 100


REQUESTS: dict[str, type[Request]] = {
    "place": PlaceRequest,
    "cancel": CancelRequest,
    "replace": ReplaceRequest,
    "cancelAll": CancelAllRequest,
    "status": StatusRequest,
    "openOrders": OpenOrdersRequest,
    "trades": TradesRequest,
}
"""The request verbs: ``tp.api.<account>.order.<verb>``."""


BALANCES = "balances"
"""The one request about the account rather than a market: ``tp.api.<account>.account.balances``."""


class BalancesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``balances``: an empty object (the account is the subject's)."""


class Balance(msgspec.Struct, frozen=True):
    """One asset of an account, in decimal strings."""

    available: str
    held: str
    """Set aside for open orders (and orders on their way to their market)."""


class ErrorBody(msgspec.Struct, frozen=True):
    code: int
    name: str
    reason: str


class Reply(msgspec.Struct, rename="camel", omit_defaults=True):
    """Every reply. ``ok`` false carries ``error``; ``sequence`` is set once sequenced."""

    ok: bool
    market: str | None = None
    sequence: int | None = None
    timestamp: int | None = None
    client_order_id: str | None = None
    duplicate: bool = False
    order: OrderState | None = None
    fills: list[Fill] = msgspec.field(default_factory=list)
    events: list[dict[str, Any]] = msgspec.field(default_factory=list)
    orders: list[OrderState] | None = None
    """``openOrders``: the account's open orders, oldest first."""
    trades: list[dict[str, Any]] | None = None
    """``trades``: the account's trades, newest first."""
    next: int | None = None
    """``trades``: pass as ``before`` for the next page (absent on the last page)."""
    balances: dict[str, Balance] | None = None
    """``balances``: the account's balances, by asset."""
    error: ErrorBody | None = None


encode_reply = msgspec.json.Encoder().encode
decode_reply = msgspec.json.Decoder(Reply).decode


def error_reply(code: int, name: str, reason: str, *, market: str | None = None,
                sequence: int | None = None, client_order_id: str | None = None,
                order: OrderState | None = None) -> bytes:
    return encode_reply(Reply(ok=False, market=market, sequence=sequence,
                              client_order_id=client_order_id, order=order,
                              error=ErrorBody(code, name, reason)))
