"""The gateway: order entry over NATS request/reply, validated at the edge.

Any number of gateway processes serve ``tp.api.<account>.order.<verb>`` in one queue
group; each is stateless. A request is checked (size, JSON, fields, market, tick, lot,
account), turned into the core's command with integer prices, and published to the
market's command stream — with ``Nats-Msg-Id`` = ``<account>:<clientOrderId>`` for a
new order, so a retried submission is sequenced once. In ``ack`` mode the reply goes
out when the stream has stored the command; in ``result`` mode (the default) when the
engine has applied it: the command carries a ``Tp-Reply`` header naming this gateway's
inbox, where the engine sends the command's events.

The gateway answers every message it receives, whatever it is, and never lets one
request's failure touch another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from tradeplane_engine.core.commands import (
    AnyCommand,
    Cancel,
    CancelAll,
    OrderType,
    Place,
    Replace,
)
from tradeplane_engine.core.events import OrderRejected
from tradeplane_engine.core.market import OffGrid
from tradeplane_engine.wire import (
    API_SUBJECTS,
    GATEWAY_QUEUE,
    HEADER_MESSAGE_ID,
    HEADER_REPLY,
    command_subject,
    decode_events,
    encode_command,
    engine_subject,
    is_account,
)
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.markets import KnownMarket, MarketDirectory
from tradeplane_gateway.protocol import (
    MAX_PAYLOAD,
    REQUESTS,
    CancelAllRequest,
    CancelRequest,
    ErrorBody,
    Fill,
    OrderState,
    PlaceRequest,
    ReplaceRequest,
    Reply,
    Request,
    ResponseMode,
    StatusRequest,
    encode_reply,
    error_reply,
    is_client_order_id,
)
from tradeplane_gateway.results import place_summary, reference_summary

log = logging.getLogger(__name__)

_decoders = {verb: msgspec.json.Decoder(kind) for verb, kind in REQUESTS.items()}


class EdgeError(Exception):
    """A request refused at the edge; becomes an error reply."""

    def __init__(self, code: int, name: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.name, self.reason = code, name, reason


def _edge(code: EdgeCode, reason: str) -> EdgeError:
    return EdgeError(int(code), code.name, reason)


def decode_request(verb: str, data: bytes) -> Request:
    """Parse a request strictly, turning msgspec's complaints into stable codes."""
    if len(data) > MAX_PAYLOAD:
        raise _edge(EdgeCode.PAYLOAD_TOO_LARGE,
                    f"payload is {len(data)} bytes; at most {MAX_PAYLOAD} are accepted")
    decoder = _decoders.get(verb)
    if decoder is None:
        raise _edge(EdgeCode.UNKNOWN_REQUEST,
                    f"unknown request {verb!r}; one of {', '.join(REQUESTS)}")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Object contains unknown field"):
            raise _edge(EdgeCode.UNKNOWN_FIELD, message) from exc
        raise _edge(EdgeCode.INVALID_FIELD, message) from exc
    except msgspec.DecodeError as exc:
        raise _edge(EdgeCode.MALFORMED_JSON, f"not JSON: {exc}") from exc


class Gateway:
    """One gateway process's worth of request handling. ``run()`` until cancelled."""

    def __init__(self, nc: Client, markets: MarketDirectory, *,
                 result_timeout: float = 5.0, publish_timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout)
        self.markets = markets
        self.result_timeout = result_timeout
        self._reply_prefix = nc.new_inbox()
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._next_token = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[str, Any], Awaitable[bytes]]] = {
            "place": self._place, "cancel": self._cancel, "replace": self._replace,
            "cancelAll": self._cancel_all, "status": self._status,
        }

    async def start(self) -> None:
        self._results = await self.nc.subscribe(f"{self._reply_prefix}.*",
                                                cb=self._on_result)
        self._requests = await self.nc.subscribe(API_SUBJECTS, queue=GATEWAY_QUEUE,
                                                 cb=self._on_request)

    async def stop(self) -> None:
        await self._requests.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.result_timeout + 1)
        await self._results.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            reply = await self.handle(msg.subject, msg.data)
        except Exception:  # one request's failure must never stop the gateway
            log.exception("request on %s failed", msg.subject)
            reply = error_reply(500, "INTERNAL", "the gateway failed on this request")
        if msg.reply:
            await self.nc.publish(msg.reply, reply)

    async def handle(self, subject: str, data: bytes) -> bytes:
        """The reply to one request on ``tp.api.<account>.order.<verb>``."""
        tokens = subject.split(".")
        account, verb = tokens[2], tokens[4]
        try:
            if not is_account(account):
                raise _edge(EdgeCode.INVALID_ACCOUNT,
                            "accounts are 1-64 characters of A-Z, a-z, 0-9, _ and -")
            request = decode_request(verb, data)
            return await self._handlers[verb](account, request)
        except EdgeError as exc:
            return error_reply(exc.code, exc.name, exc.reason)
        except OffGrid as exc:
            return error_reply(int(exc.code), exc.code.name, exc.reason)

    def _market(self, request: Request) -> KnownMarket:
        market = self.markets.get(request.market)
        if market is None:
            raise _edge(EdgeCode.UNKNOWN_MARKET, f"no market named {request.market!r}")
        return market

    # -- verbs -----------------------------------------------------------------------

    async def _place(self, account: str, request: PlaceRequest) -> bytes:
        market = self._market(request)
        spec = market.spec
        client_order_id = request.client_order_id
        if client_order_id is None:
            client_order_id = self.nc._nuid.next().decode()
        elif not is_client_order_id(client_order_id):
            raise _edge(EdgeCode.INVALID_CLIENT_ORDER_ID,
                        "clientOrderId must be 1-36 characters of A-Z, a-z, 0-9, _ and -")
        command = Place(
            0, 0, account, request.side,
            quantity=spec.to_lots(request.quantity) if request.quantity is not None else 0,
            price=spec.to_ticks(request.price) if request.price is not None else 0,
            order_type=request.type, time_in_force=request.time_in_force,
            post_only=request.post_only, stp=request.stp, client_order_id=client_order_id,
            quote_amount=(spec.to_notional_units(request.quote_amount)
                          if request.quote_amount is not None else 0),
        )
        if request.type is OrderType.LIMIT and request.price is None:
            raise _edge(EdgeCode.INVALID_FIELD, "a limit order needs a price")
        return await self._submit(market, account, command, request.response,
                                  message_id=f"{account}:{client_order_id}",
                                  client_order_id=client_order_id)

    async def _cancel(self, account: str, request: CancelRequest) -> bytes:
        market = self._market(request)
        order_id, client_order_id = _reference(request.order_id, request.client_order_id)
        command = Cancel(0, 0, account, order_id=order_id, client_order_id=client_order_id)
        return await self._submit(market, account, command, request.response)

    async def _replace(self, account: str, request: ReplaceRequest) -> bytes:
        market = self._market(request)
        spec = market.spec
        order_id, client_order_id = _reference(request.order_id, request.client_order_id)
        if request.price is None and request.quantity is None:
            raise _edge(EdgeCode.INVALID_FIELD, "a replace needs a new price or quantity")
        command = Replace(
            0, 0, account, order_id=order_id, client_order_id=client_order_id,
            price=spec.to_ticks(request.price) if request.price is not None else 0,
            quantity=spec.to_lots(request.quantity) if request.quantity is not None else 0,
        )
        return await self._submit(market, account, command, request.response)

    async def _cancel_all(self, account: str, request: CancelAllRequest) -> bytes:
        market = self._market(request)
        command = CancelAll(0, 0, account, request.side)
        return await self._submit(market, account, command, request.response)

    async def _status(self, account: str, request: StatusRequest) -> bytes:
        market = self._market(request)
        order_id, client_order_id = _reference(request.order_id, request.client_order_id)
        return await self._order_status(market, account, order_id, client_order_id)

    # -- the command stream and the engine -------------------------------------------

    async def _submit(self, market: KnownMarket, account: str, command: AnyCommand,
                      response: ResponseMode, *, message_id: str | None = None,
                      client_order_id: str | None = None) -> bytes:
        name = market.definition.name
        headers: dict[str, str] = {}
        if message_id is not None:
            headers[HEADER_MESSAGE_ID] = message_id
        token = ""
        result: asyncio.Future[bytes] | None = None
        if response is ResponseMode.RESULT:
            self._next_token += 1
            token = str(self._next_token)
            headers[HEADER_REPLY] = f"{self._reply_prefix}.{token}"
            result = self._waiting[token] = asyncio.get_running_loop().create_future()
        try:
            try:
                ack = await self.js.publish(command_subject(name), encode_command(command),
                                            headers=headers)
            except (NatsTimeout, NoStreamResponseError, APIError) as exc:
                return error_reply(
                    int(EdgeCode.NOT_SEQUENCED), EdgeCode.NOT_SEQUENCED.name,
                    f"the command stream did not take the command ({type(exc).__name__}); "
                    "retry with the same clientOrderId", market=name)
            if ack.duplicate:
                # Sequenced before: report the original instead of applying it again.
                if response is ResponseMode.ACK or not client_order_id:
                    return encode_reply(Reply(ok=True, market=name, sequence=ack.seq,
                                              client_order_id=client_order_id, duplicate=True))
                return await self._order_status(market, account, 0, client_order_id,
                                                sequence=ack.seq, duplicate=True)
            if result is None:
                return encode_reply(Reply(ok=True, market=name, sequence=ack.seq,
                                          client_order_id=client_order_id))
            try:
                payload = await asyncio.wait_for(result, self.result_timeout)
            except TimeoutError:
                return error_reply(
                    int(EdgeCode.RESULT_TIMEOUT), EdgeCode.RESULT_TIMEOUT.name,
                    f"sequenced as {ack.seq} but no result within {self.result_timeout} s; "
                    "ask for the order's status", market=name, sequence=ack.seq)
            return self._result(market, account, command, payload)
        finally:
            if token:
                self._waiting.pop(token, None)

    async def _on_result(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject.rpartition(".")[2])
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.data)

    def _result(self, market: KnownMarket, account: str, command: AnyCommand,
                payload: bytes) -> bytes:
        batch = decode_events(payload)
        formatter = market.formatter
        for event in batch.events:
            if type(event) is OrderRejected and event.account == account:
                return encode_reply(Reply(
                    ok=False, market=batch.market, sequence=batch.sequence,
                    timestamp=batch.timestamp,
                    client_order_id=getattr(command, "client_order_id", None) or None,
                    error=ErrorBody(int(event.code), event.code.name, event.reason)))
        events = [update for event in batch.events
                  if (update := formatter.order_event(event, account)) is not None]
        order: OrderState | None = None
        fills: list[Fill] = []
        if isinstance(command, Place):
            order, fills = place_summary(command, events, formatter)
        elif isinstance(command, (Cancel, Replace)):
            order, fills = reference_summary(events)
        return encode_reply(Reply(
            ok=True, market=batch.market, sequence=batch.sequence, timestamp=batch.timestamp,
            client_order_id=getattr(command, "client_order_id", None) or None,
            order=order, fills=fills, events=events))

    async def _order_status(self, market: KnownMarket, account: str, order_id: int,
                            client_order_id: str, *, sequence: int | None = None,
                            duplicate: bool = False) -> bytes:
        name = market.definition.name
        query = msgspec.json.encode({"account": account, "orderId": order_id,
                                     "clientOrderId": client_order_id})
        try:
            answer = await self.nc.request(engine_subject(name, "order"), query,
                                           timeout=self.result_timeout)
        except (NoRespondersError, NatsTimeout):
            return error_reply(int(EdgeCode.ENGINE_UNAVAILABLE),
                               EdgeCode.ENGINE_UNAVAILABLE.name,
                               f"the engine of {name} did not answer", market=name,
                               sequence=sequence)
        body = msgspec.json.decode(answer.data)
        if "error" in body:
            return error_reply(int(EdgeCode.ENGINE_UNAVAILABLE),
                               EdgeCode.ENGINE_UNAVAILABLE.name,
                               f"the engine of {name}: {body['error']}", market=name,
                               sequence=sequence)
        if body.get("order") is None and duplicate:  # the original is not applied yet
            return encode_reply(Reply(ok=True, market=name, sequence=sequence,
                                      client_order_id=client_order_id, duplicate=True))
        if body.get("order") is None:
            return error_reply(301, "UNKNOWN_ORDER",
                               "no open or recently finished order of this account has that id",
                               market=name, sequence=sequence)
        order = msgspec.convert(body["order"], OrderState)
        return encode_reply(Reply(ok=True, market=name, sequence=sequence,
                                  client_order_id=order.client_order_id or None,
                                  duplicate=duplicate, order=order))


def _reference(order_id: int | None, client_order_id: str | None) -> tuple[int, str]:
    """Exactly one of orderId and clientOrderId names an order."""
    if (order_id is None) == (client_order_id is None):
        raise _edge(EdgeCode.INVALID_FIELD, "give exactly one of orderId and clientOrderId")
    if order_id is not None and order_id <= 0:
        raise _edge(EdgeCode.INVALID_FIELD, "orderId must be positive")
    if client_order_id is not None and not is_client_order_id(client_order_id):
        raise _edge(EdgeCode.INVALID_CLIENT_ORDER_ID,
                    "clientOrderId must be 1-36 characters of A-Z, a-z, 0-9, _ and -")
    return order_id or 0, client_order_id or ""
