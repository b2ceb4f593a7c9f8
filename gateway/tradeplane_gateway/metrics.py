"""The gateway's Prometheus metrics: requests by outcome, reject codes, reply latency.

Every request the gateway answers is counted once, when it is answered, in
``tradeplane_gateway_requests_total{market,verb,type,result}``:

- ``ok``: the reply says ``ok``;
- ``rejected``: refused with a code, at the edge (validation, 9xx and the edge's tick
  and lot checks) or by the engine (1xx-4xx, in a ``result`` reply); each also counts
  in ``tradeplane_rejects_total{market,code,name,stage}``, stage ``edge`` or ``engine``;
- ``timeout``: the stream's acknowledgement or the engine's result did not come in time;
- ``error``: the command stream refused it, an engine or the history did not answer a
  query, or the gateway failed.

An engine reject of an ``ack`` request never reaches the gateway: the engine counts
nothing per order, so those show only in the events. Requests that went in flight
(validated and published to a command stream) also time their reply, from then on, in
``tradeplane_gateway_request_duration_seconds{verb,mode}``: validation before it takes
microseconds, the stream and the engine after it a millisecond or more.

Labels come from bounded sets only: a market name the directory does not know, or a
verb the protocol does not define, is ``unknown`` (a client chooses what it sends, and
must not grow the gateway's series). The hot path (an order in flight answered ``ok``)
costs a tuple lookup, a prefix test of the reply, a counter and a histogram update;
the reply is decoded only when it is not ``ok``.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgspec
from prometheus_client import Counter, Histogram

from tradeplane_engine.core.commands import Cancel, CancelAll, OrderType, Place, Replace
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.protocol import (
    REQUESTS,
    ErrorBody,
    OpenOrdersRequest,
    PlaceRequest,
    Request,
    ResponseMode,
    StatusRequest,
    TradesRequest,
)
from tradeplane_gateway.validation import Submission

OK, REJECTED, ERROR, TIMEOUT = "ok", "rejected", "error", "timeout"
EDGE, ENGINE = "edge", "engine"
UNKNOWN = "unknown"
NO_TYPE = "none"
"""The ``type`` of a request that is not a new order (only a place has an order type)."""
INTERNAL = 500

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
"""Seconds from a request to its reply: a millisecond or two through the stream and
the engine; 5 s and more only for timeouts (the result and publish timeouts)."""

REQUESTS_TOTAL = Counter(
    "tradeplane_gateway_requests",
    "Requests the gateway answered, by market, verb, order type and result "
    "(ok, rejected, error, timeout)", ["market", "verb", "type", "result"])
REJECTS_TOTAL = Counter(
    "tradeplane_rejects",
    "Requests refused with a code, at the edge (the gateway) or by the engine",
    ["market", "code", "name", "stage"])
REQUEST_SECONDS = Histogram(
    "tradeplane_gateway_request_duration_seconds",
    "Time from a request going in flight (validated and published to its market's "
    "command stream) to its reply, by verb and response mode (ack, result)",
    ["verb", "mode"],
    buckets=LATENCY_BUCKETS)

_VERBS: dict[type, str] = {Place: "place", Cancel: "cancel", Replace: "replace",
                           CancelAll: "cancelAll"}
_QUERY_VERBS: dict[type, str] = {StatusRequest: "status", OpenOrdersRequest: "openOrders",
                                 TradesRequest: "trades"}
_OK_PREFIX = b'{"ok":true'
"""How every ``ok`` reply starts (``ok`` is the reply's first field, always written)."""
_UNAVAILABLE = {INTERNAL, int(EdgeCode.ENGINE_UNAVAILABLE), int(EdgeCode.HISTORY_UNAVAILABLE),
                int(EdgeCode.NOT_SEQUENCED)}
"""Codes that say something failed, not that the request was wrong."""


class _Refusal(msgspec.Struct):
    """The part of a reply that says why it was refused (the rest is skipped)."""

    error: ErrorBody | None = None


_refusal = msgspec.json.Decoder(_Refusal).decode


class Flight(Protocol):
    """A request in flight, as the gateway keeps it."""

    @property
    def submission(self) -> Submission: ...

    @property
    def received(self) -> float:
        """``time.perf_counter()`` when the request went in flight."""

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` by which it had to be acknowledged or answered."""


class _Series:
    """The children of one (market, verb, type, response mode) of requests in flight."""

    __slots__ = ("error", "latency", "market", "ok", "rejected", "timeout")

    def __init__(self, market: str, verb: str, kind: str, mode: str) -> None:
        self.market = market
        self.ok = REQUESTS_TOTAL.labels(market, verb, kind, OK)
        self.rejected = REQUESTS_TOTAL.labels(market, verb, kind, REJECTED)
        self.error = REQUESTS_TOTAL.labels(market, verb, kind, ERROR)
        self.timeout = REQUESTS_TOTAL.labels(market, verb, kind, TIMEOUT)
        self.latency = REQUEST_SECONDS.labels(verb, mode)


class GatewayMetrics:
    """One gateway's counting; label children are made once per label set and kept."""

    def __init__(self, markets: MarketDirectory) -> None:
        self._markets = markets
        self._flights: dict[tuple[str, type, OrderType | None, ResponseMode], _Series] = {}
        self._requests: dict[tuple[str, str, str, str], Counter] = {}
        self._rejects: dict[tuple[str, int, str, str], Counter] = {}

    # -- requests in flight ----------------------------------------------------------

    def answered(self, flight: Flight, payload: bytes) -> None:
        """A request that was in flight got ``payload`` as its reply."""
        work = flight.submission
        command = work.command
        order_type = command.order_type if type(command) is Place else None
        key = (work.market.definition.name, type(command), order_type, work.response)
        series = self._flights.get(key)
        if series is None:
            series = self._flights[key] = _Series(
                key[0], _VERBS.get(key[1], UNKNOWN),
                order_type.value if order_type is not None else NO_TYPE, work.response.value)
        series.latency.observe(time.perf_counter() - flight.received)
        if payload.startswith(_OK_PREFIX):
            series.ok.inc()
            return
        code, name = _error_of(payload)
        if code == EdgeCode.RESULT_TIMEOUT or (
                code == EdgeCode.NOT_SEQUENCED and flight.deadline <= time.monotonic()):
            series.timeout.inc()  # the sweeper answered: nothing came in time
        elif code in _UNAVAILABLE:
            series.error.inc()
        else:
            series.rejected.inc()
            self._reject(series.market, code, name, ENGINE if code < 900 else EDGE)

    # -- requests answered at once -----------------------------------------------------

    def refused(self, verb: str, request: Request | None, code: int, name: str) -> None:
        """A request refused at the edge (``request``: None if it never decoded)."""
        market = self._market(request)
        self._count(market, verb, request, REJECTED)
        self._reject(market, code, name, EDGE)

    def failed(self, verb: str, request: Request | None) -> None:
        """A request the gateway failed on (answered 500 INTERNAL)."""
        self._count(self._market(request), verb, request, ERROR)

    def answered_query(self, request: Request, payload: bytes) -> None:
        """A query (status, open orders, trades) got ``payload`` as its reply."""
        market = self._market(request)
        verb = _QUERY_VERBS.get(type(request), UNKNOWN)
        if payload.startswith(_OK_PREFIX):
            self._count(market, verb, request, OK)
            return
        code, name = _error_of(payload)
        if code in _UNAVAILABLE:
            self._count(market, verb, request, ERROR)
        else:
            self._count(market, verb, request, REJECTED)
            self._reject(market, code, name, EDGE)

    # -- labels ------------------------------------------------------------------------

    def _market(self, request: Request | None) -> str:
        if request is None or self._markets.get(request.market) is None:
            return UNKNOWN
        return request.market

    def _count(self, market: str, verb: str, request: Request | None, result: str) -> None:
        kind = request.type.value if isinstance(request, PlaceRequest) else NO_TYPE
        key = (market, verb if verb in REQUESTS else UNKNOWN, kind, result)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = REQUESTS_TOTAL.labels(*key)
        child.inc()

    def _reject(self, market: str, code: int, name: str, stage: str) -> None:
        key = (market, code, name, stage)
        child = self._rejects.get(key)
        if child is None:
            child = self._rejects[key] = REJECTS_TOTAL.labels(market, str(code), name, stage)
        child.inc()


def _error_of(payload: bytes) -> tuple[int, str]:
    """The code and name of a refusal reply (500 INTERNAL if it does not say)."""
    try:
        error = _refusal(payload).error
    except msgspec.DecodeError:
        error = None
    if error is None:
        return INTERNAL, "INTERNAL"
    return error.code, error.name
