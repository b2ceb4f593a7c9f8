"""Order entry at the edge: a request's bytes to the core's command, or a stable error.

Everything here is synchronous and does no I/O, so the gateway validates a request the
moment it arrives, on the subscription's own callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from tradeplane_engine.core.commands import AnyCommand, Cancel, CancelAll, OrderType, Place, Replace
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.markets import KnownMarket, MarketDirectory
from tradeplane_gateway.protocol import (
    MAX_PAYLOAD,
    REQUESTS,
    CancelAllRequest,
    CancelRequest,
    PlaceRequest,
    ReplaceRequest,
    Request,
    ResponseMode,
    is_client_order_id,
)

_decoders = {verb: msgspec.json.Decoder(kind) for verb, kind in REQUESTS.items()}


class EdgeError(Exception):
    """A request refused at the edge; becomes an error reply."""

    def __init__(self, code: int, name: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.name, self.reason = code, name, reason


def edge_error(code: EdgeCode, reason: str) -> EdgeError:
    return EdgeError(int(code), code.name, reason)


def request_verb(subject: str) -> str | None:
    """The verb of a request subject, ``tp.api.<account>.order.<verb>``; None for any
    other subject under ``tp.api.<account>.`` (too few or too many tokens, another
    namespace than ``order``, a verb the protocol does not define), which is refused
    with ``UNKNOWN_REQUEST`` (``unknown_request``)."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[3] == "order" and tokens[4] in REQUESTS:
        return tokens[4]
    return None


def unknown_request(subject: str) -> EdgeError:
    shown = subject if len(subject) <= 120 else f"{subject[:120]}..."
    return edge_error(EdgeCode.UNKNOWN_REQUEST,
                      f"no request is served on {shown!r}: requests are "
                      f"tp.api.<account>.order.<verb>, <verb> one of {', '.join(REQUESTS)}")


def decode_request(verb: str, data: bytes) -> Request:
    """Parse a request strictly, turning msgspec's complaints into stable codes."""
    if len(data) > MAX_PAYLOAD:
        raise edge_error(EdgeCode.PAYLOAD_TOO_LARGE,
                         f"payload is {len(data)} bytes; at most {MAX_PAYLOAD} are accepted")
    decoder = _decoders.get(verb)
    if decoder is None:
        raise edge_error(EdgeCode.UNKNOWN_REQUEST,
                         f"unknown request {verb!r}; one of {', '.join(REQUESTS)}")
    try:
        request: Request = decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Object contains unknown field"):
            raise edge_error(EdgeCode.UNKNOWN_FIELD, message) from exc
        raise edge_error(EdgeCode.INVALID_FIELD, message) from exc
    except msgspec.DecodeError as exc:
        raise edge_error(EdgeCode.MALFORMED_JSON, f"not JSON: {exc}") from exc
    return request


def known_market(markets: MarketDirectory, request: Request) -> KnownMarket:
    market = markets.get(request.market)
    if market is None:
        raise edge_error(EdgeCode.UNKNOWN_MARKET, f"no market named {request.market!r}")
    return market


def order_reference(order_id: int | None, client_order_id: str | None) -> tuple[int, str]:
    """Exactly one of orderId and clientOrderId names an order."""
    if (order_id is None) == (client_order_id is None):
        raise edge_error(EdgeCode.INVALID_FIELD, "give exactly one of orderId and clientOrderId")
    if order_id is not None and order_id <= 0:
        raise edge_error(EdgeCode.INVALID_FIELD, "orderId must be positive")
    if client_order_id is not None and not is_client_order_id(client_order_id):
        raise edge_error(EdgeCode.INVALID_CLIENT_ORDER_ID,
                         "clientOrderId must be 1-36 characters of A-Z, a-z, 0-9, _ and -")
    return order_id or 0, client_order_id or ""


@dataclass(slots=True)
class Submission:
    """A validated command on its way to a market's command stream."""

    market: KnownMarket
    account: str
    command: AnyCommand
    response: ResponseMode
    message_id: str | None = None
    """``Nats-Msg-Id``: set for new orders, so a retry is sequenced once."""
    client_order_id: str | None = None


def submission(markets: MarketDirectory, account: str, request: Request,
               new_client_order_id: Callable[[], str]) -> Submission:
    """The command a place, cancel, replace or cancel-all request asks for."""
    market = known_market(markets, request)
    spec = market.spec
    if isinstance(request, PlaceRequest):
        client_order_id = request.client_order_id
        if client_order_id is None:
            client_order_id = new_client_order_id()
        elif not is_client_order_id(client_order_id):
            raise edge_error(EdgeCode.INVALID_CLIENT_ORDER_ID,
                             "clientOrderId must be 1-36 characters of A-Z, a-z, 0-9, _ and -")
        place = Place(
            0, 0, account, request.side,
            quantity=spec.to_lots(request.quantity) if request.quantity is not None else 0,
            price=spec.to_ticks(request.price) if request.price is not None else 0,
            order_type=request.type, time_in_force=request.time_in_force,
            post_only=request.post_only, stp=request.stp, client_order_id=client_order_id,
            quote_amount=(spec.to_notional_units(request.quote_amount)
                          if request.quote_amount is not None else 0),
        )
        if request.type is OrderType.LIMIT and request.price is None:
            raise edge_error(EdgeCode.INVALID_FIELD, "a limit order needs a price")
        return Submission(market, account, place, request.response,
                          f"{account}:{client_order_id}", client_order_id)
    if isinstance(request, CancelRequest):
        order_id, client_id = order_reference(request.order_id, request.client_order_id)
        return Submission(market, account, Cancel(0, 0, account, order_id, client_id),
                          request.response)
    if isinstance(request, ReplaceRequest):
        order_id, client_id = order_reference(request.order_id, request.client_order_id)
        if request.price is None and request.quantity is None:
            raise edge_error(EdgeCode.INVALID_FIELD, "a replace needs a new price or quantity")
        replace = Replace(
            0, 0, account, order_id=order_id, client_order_id=client_id,
            price=spec.to_ticks(request.price) if request.price is not None else 0,
            quantity=spec.to_lots(request.quantity) if request.quantity is not None else 0,
        )
        return Submission(market, account, replace, request.response)
    if isinstance(request, CancelAllRequest):
        return Submission(market, account, CancelAll(0, 0, account, request.side),
                          request.response)
    raise TypeError(f"not a command request: {type(request).__name__}")
