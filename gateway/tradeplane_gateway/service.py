"""The gateway: order entry over NATS request/reply, validated at the edge.

Any number of gateway processes serve ``tp.api.<account>.order.<verb>`` in one queue
group; each is stateless. They take every subject under ``tp.api.<account>.``, and answer
one that names no request with ``UNKNOWN_REQUEST``; and a book snapshot request for a
market they do not know with ``{"error": "unknown market"}`` (an engine's leader answers
its own market's), so that nothing a trader may send goes unanswered.

A request is checked (size, JSON, fields, market, tick, lot, account), turned into the
core's command with integer prices, and published to the market's command stream — with
``Nats-Msg-Id`` = ``<account>:<clientOrderId>`` for a new order, so a retried submission
is sequenced once. In ``ack`` mode the reply goes out when the stream has stored the
command; in ``result`` mode (the default) when the engine has applied it: the command
carries a ``Tp-Reply`` header naming this gateway's inbox, where the engine sends the
command's events.

The request path is a pipeline of callbacks, not a task per request: a request is
validated and published as it arrives; the stream's acknowledgement and the engine's
result come back to one inbox (``<inbox>.a.<token>`` and ``<inbox>.r.<token>``) and
complete it, in whichever order they arrive; a sweeper answers what ran out of time.
The gateway answers every request under ``tp.api`` it receives, whatever it is (on the
account's inbox only), and never lets one request's failure touch another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.nuid import NUID

from tradeplane_engine.access import GATEWAY_INBOX, is_inbox, trader_inbox
from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.core.commands import Cancel, Place, Replace
from tradeplane_engine.core.events import OrderRejected
from tradeplane_engine.core.market import OffGrid
from tradeplane_engine.ledger.amounts import shard_of
from tradeplane_engine.ledger.commands import Funded, FundOrders, FundReplace
from tradeplane_engine.wire import (
    API_SUBJECTS,
    BOOK_SNAPSHOTS,
    GATEWAY_QUEUE,
    GROUPED,
    GROUPED_ACKS,
    HEADER_ACK,
    HEADER_COMMANDS,
    HEADER_MESSAGE_ID,
    HEADER_ORDER,
    HEADER_REFUSED,
    HEADER_REPLY,
    LedgerRefusal,
    LedgerSource,
    PubAck,
    command_subject,
    decode_events,
    decode_grouped,
    decode_pub_ack,
    encode_command,
    encode_commands,
    encode_ledger_command,
    engine_subject,
    history_subject,
    is_account,
    ledger_command_subject,
    ledger_subject,
)
from tradeplane_gateway.errors import EdgeCode
from tradeplane_gateway.markets import KnownMarket, MarketDirectory
from tradeplane_gateway.metrics import UNKNOWN, GatewayMetrics
from tradeplane_gateway.protocol import (
    BALANCES,
    Balance,
    ErrorBody,
    OpenOrdersRequest,
    OrderState,
    Reply,
    ResponseMode,
    StatusRequest,
    TradesRequest,
    encode_reply,
    error_reply,
)
from tradeplane_gateway.results import not_open_reply, result_reply
from tradeplane_gateway.retries import differences
from tradeplane_gateway.tracing import (
    end_request_span,
    start_request_span,
    trace_command,
    trace_reject,
)
from tradeplane_gateway.validation import (
    EdgeError,
    Submission,
    decode_balances_request,
    decode_request,
    edge_error,
    known_market,
    order_reference,
    request_verb,
    submission,
    unknown_request,
)
from tradeplane_shared import telemetry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED
from tradeplane_shared.telemetry import TRACEPARENT

log = logging.getLogger(__name__)


class LedgerBalances(msgspec.Struct):
    """A ledger shard leader's answer to ``balances`` (``AccountBalances``)."""

    account: str
    sequence: int
    balances: dict[str, Balance]


FUNDED_AT_ONCE = 256
"""Orders in one ``fundOrders`` at most (well under a NATS message's 1 MiB)."""
COMMANDS_AT_ONCE = 256
"""Commands in one command-stream message at most (well under 1 MiB, and under
``wire.MAX_COMMANDS``)."""


@dataclass(slots=True)
class _InFlight:
    """A command published to a stream, waiting for its acknowledgement and result."""

    submission: Submission
    reply_to: str | None
    deadline: float
    sequence: int = 0
    result: bytes | None = None
    named: bytes | None = None
    """The engine's ``Tp-Order`` beside the result: the state of the order a cancel
    finished, or a cancel or replace found no longer open."""
    span: Any = None
    """The request's span when tracing is on; it ends with the reply."""
    funded_at: int = 0
    """With balances: the ledger shard's sequence of the command that funds it, once
    its stream took it (the market's acknowledgement comes later)."""
    received: float = field(default_factory=time.perf_counter)
    """When it went in flight (``time.perf_counter()``): the reply's latency counts from here."""


class Gateway:
    """One gateway process's worth of request handling."""

    def __init__(self, nc: Client, markets: MarketDirectory, *,
                 result_timeout: float = 5.0, publish_timeout: float = 5.0,
                 ledger_shards: int = 0) -> None:
        self.nc = nc
        self.markets = markets
        self.ledger_shards = ledger_shards
        """With balances (docs/ledger.md): the ledger's shards, which fund every order
        and replace before it reaches its market; 0: no balances."""
        self.result_timeout = result_timeout
        self.publish_timeout = publish_timeout
        self.requests_served = 0
        self.metrics = GatewayMetrics(markets)
        # Engines send results to gateways' inboxes only (docs/security.md).
        self._inbox = f"{GATEWAY_INBOX}.{nc._nuid.next().decode()}"
        self._id_prefix = NUID().next().decode()[:12]
        """The orders this gateway names: a random prefix of its own (12 characters drawn
        from 62 by a fresh NUID, so two gateways on one connection differ too), then a
        count (``_client_id``)."""
        self._named = 0
        self._in_flight: dict[str, _InFlight] = {}
        self._next_token = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._funding: dict[int, list[tuple[str, Funded]]] = {}
        """Orders to fund, by ledger shard, with their tokens: sent together once the
        requests at hand are read (``_send_funding``)."""
        self._funding_batches: dict[str, tuple[float, list[str]]] = {}
        """``fundOrders`` sent, by the token their stream answers on: until when they may
        be answered, and their orders' tokens."""
        self._next_batch = 0
        self._commands: dict[str, list[tuple[str, bytes, dict[str, str]]]] = {}
        """Commands to sequence, by market, with their tokens and headers: sent together
        once the requests at hand are read (``_send_commands``)."""
        self._command_batches: dict[str, tuple[float, list[str]]] = {}
        """Command-stream messages of several commands sent, by the token their stream
        answers on: until when they may be answered, and their commands' tokens."""
        self._subscriptions: list[Subscription] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscriptions = [
            await self.nc.subscribe(f"{self._inbox}.>", cb=self._on_inbox),
            await self.nc.subscribe(API_SUBJECTS, queue=GATEWAY_QUEUE, cb=self._on_request),
            await self.nc.subscribe(BOOK_SNAPSHOTS, queue=GATEWAY_QUEUE,
                                    cb=self._on_snapshot),
        ]
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop taking requests, answer those in flight (or let them time out), leave."""
        inbox, *requests = self._subscriptions
        for subscription in requests:
            await subscription.unsubscribe()
        deadline = time.monotonic() + max(self.publish_timeout, self.result_timeout) + 1
        while (self._in_flight or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await inbox.unsubscribe()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    # -- requests ----------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        self.requests_served += 1
        account = msg.subject.split(".", 3)[2]  # the subscription: tp.api.<account>.>
        verb = request_verb(msg.subject)
        label = verb or UNKNOWN  # metrics and span names take verbs from a bounded set
        if not msg.reply.startswith(f"{trader_inbox(account)}."):
            # A reply goes to the requester's own inbox and nowhere else: a reply subject
            # chosen by a client could name any subject the gateway may publish on.
            log.warning("request on %s with reply subject %r, not the account's inbox; "
                        "ignored", msg.subject[:120], msg.reply[:120])
            UNTRUSTED_SKIPPED.labels("gateway", "reply subject").inc()
            return
        span = passed_on = None
        if telemetry.enabled:
            span, passed_on = start_request_span(msg, account, label)
        request = None  # until decoded: the metrics of a refusal name its market if known
        try:
            if not is_account(account):
                raise edge_error(EdgeCode.INVALID_ACCOUNT,
                                 "accounts are 1-64 characters of A-Z, a-z, 0-9, _ and -")
            if verb is None:
                raise unknown_request(msg.subject)
            if verb == BALANCES:
                decode_balances_request(msg.data)
                self._spawn(self._answer_balances(msg.reply, account))
                return
            request = decode_request(verb, msg.data)
            if isinstance(request, (StatusRequest, OpenOrdersRequest, TradesRequest)):
                self._spawn(self._answer_query(msg.reply, account, request))
                return
            await self._publish(submission(self.markets, account, request, self._client_id),
                                msg.reply, span, passed_on)
            span = None  # in flight: it ends with the reply
        except EdgeError as exc:
            await self._reply(msg.reply, error_reply(exc.code, exc.name, exc.reason))
            self.metrics.refused(label, request, exc.code, exc.name)
            if telemetry.enabled:
                trace_reject(span, passed_on, int(exc.code), exc.name, account)
        except OffGrid as exc:
            await self._reply(msg.reply, error_reply(int(exc.code), exc.code.name, exc.reason))
            self.metrics.refused(label, request, int(exc.code), exc.code.name)
            if telemetry.enabled:
                trace_reject(span, passed_on, int(exc.code), exc.code.name, account)
        except Exception:  # one request's failure must never stop the gateway
            log.exception("request on %s failed", msg.subject)
            await self._reply(msg.reply, error_reply(500, "INTERNAL",
                                                     "the gateway failed on this request"))
            self.metrics.failed(label, request)
        finally:
            if span is not None:  # answered here, not in flight
                span.end()

    async def _on_snapshot(self, msg: Msg) -> None:
        """A book snapshot request. The leader of a market's engine answers its market's;
        a gateway answers only for a market it does not know, which no engine serves, so
        that the request gets an answer rather than silence."""
        market = msg.subject.split(".")[2]  # the subscription: tp.md.<market>.book.snapshot
        if self.markets.get(market) is not None:
            return  # its engine's leader answers
        if not is_inbox(msg.reply):
            # A trader-style inbox only (the gateway may publish to no other), as the
            # engine answers.
            log.warning("book snapshot request on %s with reply subject %r; ignored",
                        msg.subject[:120], msg.reply[:120])
            UNTRUSTED_SKIPPED.labels("gateway", "reply subject").inc()
            return
        await self._reply(msg.reply, msgspec.json.encode(
            {"error": "unknown market", "market": market}))

    @property
    def inbox(self) -> str:
        """Where engines and ledgers answer this gateway (``<inbox>.<kind>.<token>``)."""
        return self._inbox

    def _client_id(self) -> str:
        """A client order id for an order that came without one: unique to this gateway
        process, 13 to 32 characters of A-Z, a-z and 0-9."""
        self._named += 1
        return f"{self._id_prefix}{self._named}"

    async def _publish(self, work: Submission, reply_to: str | None, span: Any = None,
                       passed_on: str | None = None) -> None:
        self._next_token += 1
        token = str(self._next_token)
        headers: dict[str, str] = {}
        if span is not None:
            trace_command(span, work, headers)
        elif passed_on is not None:
            headers[TRACEPARENT] = passed_on  # a caller's unsampled trace: rejects join it
        if work.message_id is not None:
            headers[HEADER_MESSAGE_ID] = work.message_id
        if work.response is ResponseMode.RESULT:
            headers[HEADER_REPLY] = f"{self._inbox}.{GROUPED}.{token}"
        self._in_flight[token] = _InFlight(work, reply_to,
                                           time.monotonic() + self.publish_timeout, span=span)
        market = work.market.definition.name
        command = work.command
        if self.ledger_shards and isinstance(command, Place | Replace):
            # Funded first: the ledger forwards it with these headers (an order under
            # its message id, so the market's stream stores a retry once; the ledger's
            # holds a retry once too, without one), and relays the market stream's
            # acknowledgement (or its refusal) to Tp-Ack.
            headers.pop(HEADER_MESSAGE_ID, None)
            ack = f"{self._inbox}.{GROUPED_ACKS}.{token}"
            shard = shard_of(work.account, self.ledger_shards)
            if isinstance(command, Place):
                # Orders go to their shard together: every order read before the
                # ledger's stream is next written to, in one fundOrders.
                pending = self._funding.setdefault(shard, [])
                if not pending:
                    self._spawn(self._send_funding(shard))
                pending.append((token, Funded(market, command, ack,
                                              headers.get(HEADER_REPLY, ""),
                                              headers.get(TRACEPARENT, ""),
                                              named_by_gateway=work.message_id is None)))
                return
            headers[HEADER_ACK] = ack
            if self._funding.get(shard):
                await self._send_funding(shard)  # the orders read before it go first
            await self.nc.publish(ledger_command_subject(shard, LedgerSource.ORDER),
                                  encode_ledger_command(FundReplace(0, 0, market=market,
                                                                    replace=command)),
                                  reply=f"{self._inbox}.l.{token}", headers=headers)
            return
        if work.message_id is not None:
            # The trader's own clientOrderId: the stream stores a retry under its message
            # id once, so the order has a message of its own, after those read before it.
            if self._commands.get(market):
                await self._send_commands(market)
            await self.nc.publish(command_subject(market), encode_command(command),
                                  reply=f"{self._inbox}.a.{token}", headers=headers)
            return
        # Everything else that is read before the market's stream is next written to
        # goes there in one message (docs/protocol.md): it needs no message id.
        gathered = self._commands.setdefault(market, [])
        if not gathered:
            self._spawn(self._send_commands(market))
        gathered.append((token, encode_command(command), headers))

    async def _send_commands(self, market: str) -> None:
        """The commands for ``market`` gathered so far: one alone as it is, more in
        command-stream messages of at most ``COMMANDS_AT_ONCE``, each acknowledged once on
        ``<inbox>.c.c<n>`` for all its commands."""
        pending = self._commands.pop(market, [])
        for start in range(0, len(pending), COMMANDS_AT_ONCE):
            batch = pending[start:start + COMMANDS_AT_ONCE]
            try:
                if len(batch) == 1:
                    token, data, headers = batch[0]
                    await self.nc.publish(command_subject(market), data,
                                          reply=f"{self._inbox}.a.{token}", headers=headers)
                    continue
                self._next_batch += 1
                batch_token = f"c{self._next_batch}"
                self._command_batches[batch_token] = (
                    time.monotonic() + self.publish_timeout + 1, [token for token, _, _ in batch])
                await self.nc.publish(
                    command_subject(market),
                    encode_commands([(data, headers.get(HEADER_REPLY, ""),
                                      headers.get(TRACEPARENT, ""))
                                     for _, data, headers in batch]),
                    reply=f"{self._inbox}.c.{batch_token}",
                    headers={HEADER_COMMANDS: str(len(batch))})
            except NATS_ERRORS as exc:
                # Not sent: each command is answered as one the stream did not take.
                log.warning("commands for %s not sent (%s)", market, type(exc).__name__)
                await self._not_sent([token for token, _, _ in batch], "the command stream",
                                     exc)

    async def _send_funding(self, shard: int) -> None:
        """The orders to fund at ``shard`` gathered so far, as ``fundOrders`` of at most
        ``FUNDED_AT_ONCE`` orders each; the stream's acknowledgement of each comes to
        ``<inbox>.l.b<n>``, for all its orders."""
        pending = self._funding.pop(shard, [])
        for start in range(0, len(pending), FUNDED_AT_ONCE):
            batch = pending[start:start + FUNDED_AT_ONCE]
            self._next_batch += 1
            token = f"b{self._next_batch}"
            self._funding_batches[token] = (time.monotonic() + self.publish_timeout + 1,
                                            [order for order, _ in batch])
            try:
                await self.nc.publish(
                    ledger_command_subject(shard, LedgerSource.ORDER),
                    encode_ledger_command(FundOrders(0, 0,
                                                     orders=[order for _, order in batch])),
                    reply=f"{self._inbox}.l.{token}")
            except NATS_ERRORS as exc:
                # Not sent: each order is answered as a stream that did not take it.
                log.warning("orders to fund at ledger shard %d not sent (%s)", shard,
                            type(exc).__name__)
                del self._funding_batches[token]
                await self._not_sent([order for order, _ in batch], "the ledger", exc)

    async def _not_sent(self, tokens: list[str], stream: str, exc: Exception) -> None:
        """Answer each of the commands a NATS error kept from ``stream`` as one that
        stream did not take."""
        for token in tokens:
            flight = self._in_flight.pop(token, None)
            if flight is not None:
                await self._complete(flight, error_reply(
                    int(EdgeCode.NOT_SEQUENCED), EdgeCode.NOT_SEQUENCED.name,
                    f"{stream} did not take the command (not sent: {type(exc).__name__}); "
                    "retry with the same clientOrderId",
                    market=flight.submission.market.definition.name))

    async def _on_inbox(self, msg: Msg) -> None:
        kind, _, token = msg.subject[len(self._inbox) + 1:].partition(".")
        if not token and kind in (GROUPED, GROUPED_ACKS):
            await self._on_grouped(kind, msg.data)
            return
        batches = (self._command_batches if kind == "c" else
                   self._funding_batches if kind == "l" else None)
        if batches is not None and token in batches:
            # The acknowledgement of a command-stream message of several commands, or of
            # a fundOrders: each command's, or each order's.
            _, tokens = batches.pop(token)
            answer = self._on_ack if kind == "c" else self._on_ledger_ack
            for each in tokens:
                flight = self._in_flight.get(each)
                if flight is not None:
                    try:
                        await answer(each, flight, msg.data)
                    except Exception:  # one command's failure must never stop the others
                        await self._failed(each, flight)
            return
        flight = self._in_flight.get(token)
        if flight is None:
            return  # answered already (or timed out)
        try:
            if kind == "l":
                await self._on_ledger_ack(token, flight, msg.data)
            elif kind in ("a", GROUPED_ACKS):
                await self._on_stream_ack(token, flight, msg.data, bool(
                    msg.headers and HEADER_REFUSED in msg.headers))
            else:
                named = (msg.headers or {}).get(HEADER_ORDER)
                await self._on_result(token, flight, msg.data,
                                      named.encode() if named else None)
        except Exception:
            await self._failed(token, flight)

    async def _on_stream_ack(self, token: str, flight: _InFlight, data: bytes,
                             refused: bool) -> None:
        """The market stream's acknowledgement of a command, or the ledger's refusal to
        fund it."""
        if not refused:
            await self._on_ack(token, flight, data)
            return
        del self._in_flight[token]
        refusal = self._ledger_refusal(data)
        if (refusal is not None and refusal.code == RejectCode.UNKNOWN_ORDER
                and isinstance(flight.submission.command, Replace)):
            self._spawn(self._answer_unfunded_replace(flight, refusal))
        else:
            await self._complete(flight, self._refusal(flight, refusal))

    async def _on_result(self, token: str, flight: _InFlight, result: bytes,
                         named: bytes | None) -> None:
        """A command's result from its engine: the reply goes once the stream's
        acknowledgement is in too."""
        if flight.result is None:
            flight.result = result
            flight.named = named
            if flight.sequence:
                del self._in_flight[token]
                await self._finish(flight)

    async def _on_grouped(self, kind: str, data: bytes) -> None:
        """Answers to several commands in one message (``wire.Grouped``): an engine's
        results, or the acknowledgements a ledger shard relays."""
        try:
            answers = decode_grouped(data)
        except msgspec.DecodeError as exc:
            log.warning("grouped answers that are not: %s", str(exc)[:120])
            UNTRUSTED_SKIPPED.labels("gateway", "grouped answers").inc()
            return
        for item in answers:
            flight = self._in_flight.get(item.token)
            if flight is None:
                continue  # answered already (or timed out)
            try:
                if kind == GROUPED:
                    await self._on_result(item.token, flight, bytes(item.answer),
                                          item.named())
                else:
                    await self._on_stream_ack(item.token, flight, bytes(item.answer),
                                              item.refused)
            except Exception:
                await self._failed(item.token, flight)

    async def _failed(self, token: str, flight: _InFlight) -> None:
        log.exception("completing a request failed")
        self._in_flight.pop(token, None)
        await self._complete(flight, error_reply(
            500, "INTERNAL", "the gateway failed on this request"))

    async def _on_ack(self, token: str, flight: _InFlight, data: bytes) -> None:
        work = flight.submission
        name = work.market.definition.name
        ack = await self._sequenced(token, flight, data, "the command stream")
        if ack is None:
            return
        if ack.duplicate and work.message_id is not None:
            # A retry of the trader's clientOrderId, sequenced before: report the
            # original instead of applying it again.
            del self._in_flight[token]
            self._spawn(self._answer_duplicate(flight, ack.seq))
            return
        # Anything else the stream calls a duplicate is this very command, stored by an
        # earlier send of it: a ledger shard sending its forward again (its first
        # acknowledgement was late). It is acknowledged, and its result still comes.
        if work.response is ResponseMode.ACK:
            del self._in_flight[token]
            await self._complete(flight, encode_reply(Reply(
                ok=True, market=name, sequence=ack.seq, client_order_id=work.client_order_id)))
            return
        flight.sequence = ack.seq
        flight.deadline = time.monotonic() + self.result_timeout
        if flight.result is not None:  # the engine was quicker than the acknowledgement
            del self._in_flight[token]
            await self._finish(flight)

    async def _on_ledger_ack(self, token: str, flight: _InFlight, data: bytes) -> None:
        """The ledger shard's stream took (or refused) an order or replace to fund. The
        market's acknowledgement, or the ledger's refusal, follows on ``.a.`` (a retried
        order's too: the ledger sends it again, and the market's stream says it is a
        duplicate)."""
        ack = await self._sequenced(token, flight, data, "the ledger")
        if ack is not None:
            flight.funded_at = ack.seq

    async def _sequenced(self, token: str, flight: _InFlight, data: bytes,
                         stream: str) -> PubAck | None:
        """A stream's acknowledgement, or None once the request is answered
        ``NOT_SEQUENCED`` (the stream refused it, or there is no such stream)."""
        ack = decode_pub_ack(data) if data else None
        if ack is not None and ack.error is None and ack.seq:
            return ack
        del self._in_flight[token]
        reason = (ack.error or {}).get("description", "no stream") if ack else "no stream"
        await self._complete(flight, error_reply(
            int(EdgeCode.NOT_SEQUENCED), EdgeCode.NOT_SEQUENCED.name,
            f"{stream} did not take the command ({reason}); retry with the same "
            "clientOrderId", market=flight.submission.market.definition.name))
        return None

    @staticmethod
    def _ledger_refusal(data: bytes) -> LedgerRefusal | None:
        try:
            return msgspec.json.decode(data, type=LedgerRefusal)
        except msgspec.DecodeError:
            log.warning("a ledger refusal that is not one: %r", data[:120])
            UNTRUSTED_SKIPPED.labels("gateway", "ledger refusal").inc()
            return None

    def _refusal(self, flight: _InFlight, refusal: LedgerRefusal | None) -> bytes:
        """The ledger did not fund the order or replace: its reject code and reason."""
        name = flight.submission.market.definition.name
        client_order_id = getattr(flight.submission.command, "client_order_id", None) or None
        if refusal is None:
            return error_reply(500, "INTERNAL", "the ledger refused the order", market=name)
        return encode_reply(Reply(ok=False, market=name, client_order_id=client_order_id,
                                  error=ErrorBody(refusal.code, refusal.name, refusal.reason)))

    async def _answer_unfunded_replace(self, flight: _InFlight, refusal: LedgerRefusal) -> None:
        """A replace of an order the ledger does not hold for: one that is no longer open
        gets ``ORDER_NOT_OPEN`` with the order, as without balances; one still open (its
        market took it a moment ago, and the ledger has not settled that yet) gets the
        ledger's refusal, to retry."""
        work = flight.submission
        command = work.command
        assert isinstance(command, Replace)
        try:
            body = await self._find_order(work.market, work.account, command.order_id,
                                          command.client_order_id)
            order = body.get("order")
            if order is not None and order.get("status") not in ("new", "partiallyFilled"):
                reply = not_open_reply(work, None, None, msgspec.convert(order, OrderState))
            else:
                reply = self._refusal(flight, refusal)
        except Exception:
            log.exception("answering a refused replace failed")
            reply = error_reply(500, "INTERNAL", "the gateway failed on this request")
        await self._complete(flight, reply)

    async def _sweep(self) -> None:
        """Answer every request whose acknowledgement or result did not come in time."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for batches in (self._funding_batches, self._command_batches):
                for token in [token for token, (until, _) in batches.items() if until < now]:
                    del batches[token]  # its orders timed out (below)
            expired = [token for token, flight in self._in_flight.items()
                       if flight.deadline < now]
            for token in expired:
                flight = self._in_flight.pop(token)
                name = flight.submission.market.definition.name
                if flight.funded_at and not flight.sequence:
                    reply = error_reply(
                        int(EdgeCode.RESULT_TIMEOUT), EdgeCode.RESULT_TIMEOUT.name,
                        f"taken by the ledger (shard sequence {flight.funded_at}) but not "
                        f"funded and sent within {self.publish_timeout} s; ask for the "
                        "order's status, or retry with the same clientOrderId",
                        market=name, client_order_id=getattr(
                            flight.submission.command, "client_order_id", None) or None)
                elif flight.sequence:
                    reply = error_reply(
                        int(EdgeCode.RESULT_TIMEOUT), EdgeCode.RESULT_TIMEOUT.name,
                        f"sequenced as {flight.sequence} but no result within "
                        f"{self.result_timeout} s; ask for the order's status", market=name,
                        sequence=flight.sequence, client_order_id=getattr(
                            flight.submission.command, "client_order_id", None) or None)
                else:
                    reply = error_reply(
                        int(EdgeCode.NOT_SEQUENCED), EdgeCode.NOT_SEQUENCED.name,
                        f"the command stream did not acknowledge within "
                        f"{self.publish_timeout} s; retry with the same clientOrderId",
                        market=name)
                await self._complete(flight, reply)

    async def _complete(self, flight: _InFlight, payload: bytes) -> None:
        """Answer a request that was in flight (and end its span)."""
        await self._reply(flight.reply_to, payload)
        self.metrics.answered(flight, payload)
        if flight.span is not None:
            end_request_span(flight.span, flight.sequence, payload)

    async def _reply(self, reply_to: str | None, payload: bytes) -> None:
        if reply_to:
            await self.nc.publish(reply_to, payload)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- replies -----------------------------------------------------------------------

    async def _finish(self, flight: _InFlight) -> None:
        """Answer a request whose result came (and was acknowledged)."""
        assert flight.result is not None
        reply = result_reply(flight.submission, flight.result, flight.named)
        if reply is None:
            self._spawn(self._answer_from_history(flight))
        else:
            await self._complete(flight, reply)

    async def _answer_from_history(self, flight: _InFlight) -> None:
        """A cancel or replace the engine found no open order for, and remembers none
        finished: PostgreSQL has every order ever accepted. ``UNKNOWN_ORDER`` when it has
        none either (or no recorder answers)."""
        try:
            assert flight.result is not None
            work = flight.submission
            command = work.command
            assert isinstance(command, (Cancel, Replace))
            batch = decode_events(flight.result)
            history = await self._ask(
                history_subject(work.market.definition.name, "order"),
                {"account": work.account, "orderId": command.order_id,
                 "clientOrderId": command.client_order_id})
            if history.get("order") is not None:
                reply = not_open_reply(work, batch.sequence, batch.timestamp,
                                       msgspec.convert(history["order"], OrderState))
            else:
                refused = next(event for event in batch.events
                               if type(event) is OrderRejected)
                reply = encode_reply(Reply(
                    ok=False, market=batch.market, sequence=batch.sequence,
                    timestamp=batch.timestamp, client_order_id=command.client_order_id or None,
                    error=ErrorBody(int(refused.code), refused.code.name, refused.reason)))
        except Exception:
            log.exception("answering from the order history failed")
            reply = error_reply(500, "INTERNAL", "the gateway failed on this request")
        await self._complete(flight, reply)

    async def _answer_query(self, reply_to: str | None, account: str,
                            request: StatusRequest | OpenOrdersRequest | TradesRequest) -> None:
        try:
            market = known_market(self.markets, request)
            if isinstance(request, StatusRequest):
                order_id, client_order_id = order_reference(request.order_id,
                                                            request.client_order_id)
                reply = await self._order_status(market, account, order_id, client_order_id)
            elif isinstance(request, OpenOrdersRequest):
                reply = await self._open_orders(market, account)
            else:
                reply = await self._trades(market, account, request)
        except EdgeError as exc:
            reply = error_reply(exc.code, exc.name, exc.reason)
        await self._reply(reply_to, reply)
        self.metrics.answered_query(request, reply)

    async def _ask(self, subject: str, body: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        """A query to an engine or a recorder: its answer, or ``{"error": ...}``."""
        try:
            answer = await self.nc.request(subject, msgspec.json.encode(body),
                                           timeout=timeout or self.result_timeout)
        except NoRespondersError:
            return {"error": "no responders"}
        except NatsTimeout:
            return {"error": "no answer in time"}
        try:
            result = msgspec.json.decode(answer.data)
        except msgspec.DecodeError:
            result = None
        if not isinstance(result, dict):
            log.warning("an answer on %s that is not a JSON object: %r", subject[:80],
                        answer.data[:80])
            UNTRUSTED_SKIPPED.labels("gateway", "answer").inc()
            return {"error": "an answer that is not one"}
        return result

    async def _answer_balances(self, reply_to: str, account: str) -> None:
        """The account's balances, from the leader of its ledger shard."""
        if not self.ledger_shards:
            reply = error_reply(int(EdgeCode.BALANCES_UNAVAILABLE),
                                EdgeCode.BALANCES_UNAVAILABLE.name,
                                "this exchange keeps no balances (it runs without a ledger)")
        else:
            body = await self._ask(ledger_subject(shard_of(account, self.ledger_shards),
                                                  BALANCES), {"account": account})
            try:
                answer = msgspec.convert(body, LedgerBalances)
                reply = encode_reply(Reply(ok=True, balances=answer.balances))
            except msgspec.ValidationError:
                reply = error_reply(int(EdgeCode.BALANCES_UNAVAILABLE),
                                    EdgeCode.BALANCES_UNAVAILABLE.name,
                                    f"the ledger: {str(body.get('error'))[:120]}")
        await self._reply(reply_to, reply)

    async def _open_orders(self, market: KnownMarket, account: str) -> bytes:
        name = market.definition.name
        body = await self._ask(engine_subject(name, "openOrders"), {"account": account})
        if "error" in body:
            return error_reply(int(EdgeCode.ENGINE_UNAVAILABLE),
                               EdgeCode.ENGINE_UNAVAILABLE.name,
                               f"the engine of {name}: {body['error']}", market=name)
        orders = msgspec.convert(body["orders"], list[OrderState])
        return encode_reply(Reply(ok=True, market=name, sequence=body.get("sequence"),
                                  orders=orders))

    async def _trades(self, market: KnownMarket, account: str,
                      request: TradesRequest) -> bytes:
        name = market.definition.name  # limit and before were range-checked as decoded
        body = await self._ask(history_subject(name, "trades"),
                               {"account": account, "before": request.before,
                                "limit": request.limit})
        if "error" in body:
            return error_reply(int(EdgeCode.HISTORY_UNAVAILABLE),
                               EdgeCode.HISTORY_UNAVAILABLE.name,
                               f"trade history of {name}: {body['error']}", market=name)
        return encode_reply(Reply(ok=True, market=name, trades=body["trades"],
                                  next=body.get("next")))

    async def _answer_duplicate(self, flight: _InFlight, sequence: int) -> None:
        """A place the command stream took for a retry: the original was sequenced as
        ``sequence``, so the answer is the original's state — also when the engine cannot
        tell yet (recovering after a restart, no leader, not applied that far): the
        gateway asks again until the result timeout. Then it answers 910, which says the
        order is sequenced and how to learn its outcome, as for any result that did not
        come in time; never 911, which would read as "not placed".

        A retry with other terms than the original's is refused (913): it was not placed.
        An ``ack`` request is answered the same way, without the order when the terms
        agree, and ``duplicate`` alone when nothing could be learnt in time."""
        work = flight.submission
        ack = work.response is ResponseMode.ACK
        market, client_order_id = work.market, work.client_order_id or ""
        name = market.definition.name
        deadline = time.monotonic() + self.result_timeout
        pause = 0.02
        while True:
            body = await self._find_order(market, work.account, 0, client_order_id,
                                          timeout=max(deadline - time.monotonic(), 0.01))
            if body.get("order") is not None:
                reply = self._duplicate(work, sequence, body["order"])
                break
            if ("error" not in body and body.get("sequence", 0) >= sequence) or (
                    ack and time.monotonic() >= deadline):
                # Applied, but neither the engine nor a history knows the order any more
                # (or, for an ack, it is sequenced and nothing more could be learnt).
                reply = encode_reply(Reply(ok=True, market=name, sequence=sequence,
                                           client_order_id=client_order_id, duplicate=True))
                break
            left = deadline - time.monotonic()
            if left <= 0:
                why = body.get("error") or f"applied up to {body.get('sequence')} only"
                reply = error_reply(
                    int(EdgeCode.RESULT_TIMEOUT), EdgeCode.RESULT_TIMEOUT.name,
                    f"sequenced as {sequence} when clientOrderId {client_order_id} was first "
                    f"sent, but the engine of {name} could not tell its outcome within "
                    f"{self.result_timeout} s ({why}); ask for its status by clientOrderId",
                    market=name, sequence=sequence, client_order_id=client_order_id)
                break
            await asyncio.sleep(min(pause, left))
            pause = min(2 * pause, 0.5)
        await self._complete(flight, reply)

    def _duplicate(self, work: Submission, sequence: int, original: dict[str, Any]) -> bytes:
        """The reply to a retried place, given the original order the engine or
        PostgreSQL described."""
        name = work.market.definition.name
        client_order_id = work.client_order_id
        order = msgspec.convert(original, OrderState)
        assert isinstance(work.command, Place)
        differ = differences(work.command, original, work.market.formatter)
        if differ:
            return error_reply(
                int(EdgeCode.DUPLICATE_MISMATCH), EdgeCode.DUPLICATE_MISMATCH.name,
                f"clientOrderId {client_order_id} was first sent as sequence {sequence} "
                f"with other terms: {'; '.join(differ)}. This order was not placed; use "
                "another clientOrderId for a new order", market=name, sequence=sequence,
                client_order_id=client_order_id, order=order)
        return encode_reply(Reply(
            ok=True, market=name, sequence=sequence, client_order_id=client_order_id,
            duplicate=True, order=None if work.response is ResponseMode.ACK else order))

    async def _find_order(self, market: KnownMarket, account: str, order_id: int,
                          client_order_id: str, *,
                          timeout: float | None = None) -> dict[str, Any]:
        """The engine's answer about an order (``order`` None: it does not know it, or
        ``error``), with the order from PostgreSQL when the engine does not know it."""
        name = market.definition.name
        query = {"account": account, "orderId": order_id, "clientOrderId": client_order_id}
        body = await self._ask(engine_subject(name, "order"), query, timeout)
        if body.get("order") is None and "error" not in body:
            # Neither open nor recently finished: PostgreSQL has every order ever accepted.
            history = await self._ask(history_subject(name, "order"), query, timeout)
            if history.get("order") is not None:
                body["order"] = history["order"]
        return body

    async def _order_status(self, market: KnownMarket, account: str, order_id: int,
                            client_order_id: str) -> bytes:
        name = market.definition.name
        body = await self._find_order(market, account, order_id, client_order_id)
        if "error" in body:
            return error_reply(int(EdgeCode.ENGINE_UNAVAILABLE),
                               EdgeCode.ENGINE_UNAVAILABLE.name,
                               f"the engine of {name}: {body['error']}", market=name)
        if body.get("order") is None:
            return error_reply(int(RejectCode.UNKNOWN_ORDER), RejectCode.UNKNOWN_ORDER.name,
                               "no open or recently finished order of this account has that id",
                               market=name)
        order = msgspec.convert(body["order"], OrderState)
        return encode_reply(Reply(ok=True, market=name,
                                  client_order_id=order.client_order_id or None, order=order))

