"""Order entry at the edge: a request's bytes to the core's command, or a stable error.

Everything here is synchronous and does no I/O, so the gateway validates a request the
moment it arrives, on the subscription's own callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from tradeplane_engine.core.commands import (
    AnyCommand,
    Cancel,
    CancelAll,
    OrderType,
    Place,
    Replace,
    Side,
    TimeInForce,
)
from tradeplane_engine.wire import api_subject
from tradeplane_gateway.errors import EdgeCode, TradeplaneError
from tradeplane_gateway.markets import KnownMarket, MarketDirectory
from tradeplane_gateway.protocol import (
    BALANCES,
    MAX_PAYLOAD,
    REQUESTS,
    BalancesRequest,
    CancelAllRequest,
    CancelRequest,
    PlaceRequest,
    ReplaceRequest,
    Request,
    ResponseMode,
    is_client_order_id,
)

_decoders = {verb: msgspec.json.Decoder(kind) for verb, kind in REQUESTS.items()}
_balances_decoder = msgspec.json.Decoder(BalancesRequest)
_decode_any = msgspec.json.Decoder().decode


class EdgeError(TradeplaneError):
    """A request refused at the edge; becomes an error reply."""

    def __init__(self, code: int, name: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.name, self.reason = code, name, reason


def edge_error(code: EdgeCode, reason: str) -> EdgeError:
    return EdgeError(int(code), code.name, reason)


def request_verb(subject: str) -> str | None:
    """The verb of a request subject, ``tp.api.<account>.order.<verb>`` (or ``balances``
    for ``tp.api.<account>.account.balances``); None for any
    other subject under ``tp.api.<account>.`` (too few or too many tokens, another
    namespace than ``order``, a verb the protocol does not define), which is refused
    with ``UNKNOWN_REQUEST`` (``unknown_request``)."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[3] == "order" and tokens[4] in REQUESTS:
        return tokens[4]
    if len(tokens) == 5 and tokens[3] == "account" and tokens[4] == BALANCES:
        return BALANCES
    return None


def unknown_request(subject: str) -> EdgeError:
    shown = subject if len(subject) <= 120 else f"{subject[:120]}..."
    return edge_error(EdgeCode.UNKNOWN_REQUEST,
                      f"no request is served on {shown!r}: requests are "
                      f"{api_subject('<account>', '<verb>')}, <verb> one of {', '.join(REQUESTS)}")


def decode_request(verb: str, data: bytes) -> Request:
    """Parse a request strictly, turning msgspec's complaints into stable codes."""
    decoder = _decoders.get(verb)
    if decoder is None:
        raise edge_error(EdgeCode.UNKNOWN_REQUEST,
                         f"unknown request {verb!r}; one of {', '.join(REQUESTS)}")
    request: Request = _strictly(decoder, data)
    return request


def decode_balances_request(data: bytes) -> BalancesRequest:
    """A ``balances`` request: an empty JSON object, held to the same rules."""
    request: BalancesRequest = _strictly(_balances_decoder, data)
    return request


def _strictly[T](decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    if len(data) > MAX_PAYLOAD:
        raise edge_error(EdgeCode.PAYLOAD_TOO_LARGE,
                         f"payload is {len(data)} bytes; at most {MAX_PAYLOAD} are accepted")
    try:
        refuse_duplicate_keys(data)
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Object contains unknown field"):
            raise edge_error(EdgeCode.UNKNOWN_FIELD, message) from exc
        raise edge_error(EdgeCode.INVALID_FIELD, message) from exc
    except msgspec.DecodeError as exc:
        raise edge_error(EdgeCode.MALFORMED_JSON, f"not JSON: {exc}") from exc


class _DuplicateKey(Exception):  # noqa: N818 - control flow inside refuse_duplicate_keys
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    unique = dict(pairs)
    if len(unique) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return unique


def refuse_duplicate_keys(data: bytes) -> None:
    """INVALID_FIELD when an object of the JSON document has a key twice, at any depth.

    JSON decoders (msgspec's too) keep the last of two equal keys, so a duplicate would be
    a second, silent reading of the request. The cheap test is exact in one direction:
    every key is followed by a colon, so when the payload has no more colons than the
    decoded top-level object has keys, no key is there twice and no object is nested.
    Well-formed requests pass on that alone; anything else (a colon inside a string,
    a nested object) is read once more by the standard library, which sees every pair.
    Raises msgspec.DecodeError when the payload is not JSON.
    """
    try:
        document = _decode_any(data)
    except RecursionError:
        return  # nested deeper than any request: the request's own decoder refuses it
    if type(document) is dict and data.count(b":") == len(document):
        return
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        raise edge_error(EdgeCode.INVALID_FIELD,
                         f"key {exc.args[0]!r} is given twice in one object") from None
    except RecursionError:
        return  # as above


def check_order_fields(request: PlaceRequest) -> None:
    """Refuse, before anything is sequenced, a place whose fields do not go together.

    These are the engine's own checks that depend on the request alone (the engine keeps
    them: commands also come from elsewhere): which of price, quantity and quoteAmount an
    order type takes, and which flags go with it. Answered INVALID_FIELD.
    """
    if request.type is OrderType.LIMIT:
        if request.price is None:
            raise edge_error(EdgeCode.INVALID_FIELD, "a limit order needs a price")
        if request.quantity is None:
            raise edge_error(EdgeCode.INVALID_FIELD, "a limit order needs a quantity")
        if request.quote_amount is not None:
            raise edge_error(EdgeCode.INVALID_FIELD,
                             "quoteAmount is for market buys; a limit order takes a quantity")
        if request.post_only and request.time_in_force is not TimeInForce.GTC:
            raise edge_error(EdgeCode.INVALID_FIELD, "postOnly goes with timeInForce GTC only")
        return
    if request.price is not None:
        raise edge_error(EdgeCode.INVALID_FIELD, "a market order takes no price")
    if request.post_only:
        raise edge_error(EdgeCode.INVALID_FIELD, "a market order cannot be postOnly")
    if request.quote_amount is None:
        if request.quantity is None:
            raise edge_error(EdgeCode.INVALID_FIELD,
                             "a market order needs a quantity (or, to buy, a quoteAmount)")
        return
    if request.quantity is not None:
        raise edge_error(EdgeCode.INVALID_FIELD, "give one of quantity and quoteAmount, not both")
    if request.side is not Side.BUY:
        raise edge_error(EdgeCode.INVALID_FIELD, "quoteAmount is for market buys only")
    if request.time_in_force is TimeInForce.FOK:
        raise edge_error(EdgeCode.INVALID_FIELD, "a market buy by quoteAmount cannot be FOK")


def known_market(markets: MarketDirectory, request: Request) -> KnownMarket:
    market = markets.get(request.market)
    if market is None:
        raise edge_error(EdgeCode.UNKNOWN_MARKET, f"no market named {request.market!r}")
    return market


def order_reference(order_id: int | None, client_order_id: str | None) -> tuple[int, str]:
    """Exactly one of orderId and clientOrderId names an order (orderId's range was
    checked as the request was decoded)."""
    if (order_id is None) == (client_order_id is None):
        raise edge_error(EdgeCode.INVALID_FIELD, "give exactly one of orderId and clientOrderId")
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
    """``Nats-Msg-Id``: set for a new order under the trader's own clientOrderId, so a
    retry is sequenced once."""
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
        check_order_fields(request)
        place = Place(
            0, 0, account, request.side,
            quantity=spec.to_lots(request.quantity) if request.quantity is not None else 0,
            price=spec.to_ticks(request.price) if request.price is not None else 0,
            order_type=request.type, time_in_force=request.time_in_force,
            post_only=request.post_only, stp=request.stp, client_order_id=client_order_id,
            quote_amount=(spec.to_notional_units(request.quote_amount)
                          if request.quote_amount is not None else 0),
        )
        # The stream stores a retry of the trader's clientOrderId once (its message id);
        # one the gateway gave is new each time, and needs none.
        message_id = (f"{account}:{client_order_id}" if request.client_order_id is not None
                      else None)
        return Submission(market, account, place, request.response, message_id,
                          client_order_id)
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
