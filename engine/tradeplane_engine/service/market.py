"""One market's engine service: the command stream in, events and market data out.

For each batch of commands the feed hands over, the service applies every command to
the pure core, then publishes, in this order:

1. each command's events to the market's events stream (JetStream, message id
   ``<market>:<sequence>``, so a re-publish after a crash is dropped), waiting for the
   stream's acknowledgements of the whole batch;
2. the events to the sender's ``Tp-Reply`` subject, if any (the gateway's ``result``);
3. private order updates per account, and public trades and L2 deltas.

So a trader never sees a result or a fill that the events stream does not hold. After
a restart the service replays the command stream from the start (snapshots shorten
that later) and publishes nothing for commands whose events the stream already holds;
the market-data sequence numbers come out the same as before, because they are counted
from the commands, not from the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.access import is_inbox
from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core import (
    AnyEvent,
    Engine,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectCode,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from tradeplane_engine.core.events import open_status
from tradeplane_engine.feed import FeedError, SequencedCommand, StreamFeed
from tradeplane_engine.service.events import EventsPublisher, Fenced
from tradeplane_engine.service.lease import Lease, NotLeadingError
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.service.metrics import MarketMetrics
from tradeplane_engine.service.tracing import trace_batch
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.snapshots import Snapshot, latest_snapshot
from tradeplane_engine.streams import (
    StreamSettings,
    ensure_market_streams,
    replay_spec,
)
from tradeplane_engine.wire import (
    HEADER_ORDER,
    HEADER_REPLY,
    HEADER_SEQUENCE,
    MAX_REQUEST,
    EventBatch,
    MarketDefinition,
    PublicFormatter,
    book_snapshot_subject,
    command_stream,
    decode_command,
    encode_events,
    engine_subject,
    event_stream,
    event_subject,
    header_sequence,
    is_subject,
)
from tradeplane_shared import telemetry
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

if TYPE_CHECKING:
    from tradeplane_engine.core.book import Order

log = logging.getLogger(__name__)

RECENT_ORDERS = 100_000
"""Finished orders the engine remembers for status queries (PostgreSQL keeps them all)."""

UNREADABLE_LOOKBACK = 1000
"""Events messages without a readable ``Tp-Sequence`` stepped over at the stream's end."""

_encode = msgspec.json.Encoder().encode
_TERMINAL = (OrderStatus.FILLED, OrderStatus.CANCELED)


class SwitchoverRequest(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    """The standby to lead next."""


class _Readiness(msgspec.Struct):
    ready: bool


class StatusQuery(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    account: str
    order_id: int = 0
    client_order_id: str = ""


class MarketService:
    """Runs one market: consume, apply, publish. ``run()`` until cancelled."""

    def __init__(self, nc: Client, definition: MarketDefinition,
                 settings: StreamSettings | None = None, *, batch: int = 512,
                 pool: asyncpg.Pool | None = None, replica: str = "solo",
                 leases: KeyValue | None = None, replicas: KeyValue | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.market = definition.name
        self.definition = definition
        self.settings = settings or StreamSettings()
        self.engine = Engine(definition.spec())
        self.formatter = PublicFormatter(self.engine.spec)
        self.market_data = MarketData(self.market, self.formatter)
        self.events = EventsPublisher(nc, self.market)
        self.published_through = 0
        """Commands up to this sequence already have their events in the events stream."""
        self.recent: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self.recent_by_client_id: dict[tuple[str, str], int] = {}
        self._accepted: dict[int, OrderAccepted] = {}
        """How each order not yet finished was accepted (as far as ``_remember`` has
        come), so that its finished state describes it whole: side, price, quantity."""
        self._replaced: dict[int, OrderReplaced] = {}
        """The last replace of each order not yet finished that was replaced."""
        self.ready = asyncio.Event()
        """Set once the service has caught up with what was published before it started."""
        self._batch = batch
        self.pool = pool
        """PostgreSQL, for snapshots to start from (None: replay the whole stream)."""
        self.replayed = 0
        """Commands applied again at start, whose events were already published."""
        self._rejections = 0
        self._event_subject = event_subject(self.market)
        self._feed: StreamFeed | None = None
        self.replica = replica
        self.leading = leases is None
        """Only the leader publishes; without a lease bucket a replica leads alone."""
        self.lease = None if leases is None else Lease(
            leases, self.market, replica, on_promoted=self._promote, on_demoted=self._demote)
        self.epoch = 0
        self.stream_last = 0
        """The events stream's last sequence as far as this replica knows (fencing)."""
        self.pending: list[tuple[SequencedCommand, bytes, list[AnyEvent]]] = []
        """Applied while standing by, events not yet seen in the events stream."""
        self._lock = asyncio.Lock()
        self.failovers = 0
        """Times this replica took the lead."""
        self._leader_subscriptions: list[Subscription] = []
        self.replicas = replicas
        """The replicas' status bucket, where this replica reports (None: it does not)."""
        self.last_failover: int | None = None
        """When this replica last took the lead (ns since the epoch)."""
        self.metrics = MarketMetrics(self)
        self._tasks: asyncio.TaskGroup | None = None
        """The service's tasks (lease, reporter, commands, a takeover): one fails, all end."""

    async def run(self) -> None:
        await ensure_market_streams(self.js, self.definition, self.settings)
        # A replay starts in the mode the stream's first command met, not the definition's
        # current one; a snapshot, if there is one, carries its own mode.
        self.engine = Engine(await replay_spec(self.js, self.definition))
        self._accepted, self._replaced = {}, {}
        self.stream_last, self.published_through = await self._last_events_message()
        start = await self._restore(self.published_through)
        if self.published_through <= start:
            self.ready.set()
        subscriptions = [
            await self.nc.subscribe(self._event_subject, cb=self._on_published),
            await self.nc.subscribe(engine_subject(self.market, f"{self.replica}.status"),
                                    cb=self._on_status),
        ]
        if self.leading:
            await self._serve()
        commands = await self.js.stream_info(command_stream(self.market))
        if commands.state.messages and commands.state.first_seq > start + 1:
            raise FeedError(
                f"{command_stream(self.market)} starts at sequence {commands.state.first_seq}, "
                f"but the engine needs {start + 1}: its retention is shorter than the "
                "engine's recovery needs (keep more than the snapshot interval)")
        self._feed = StreamFeed(self.nc, command_stream(self.market), start + 1,
                                 batch=self._batch, reply_header=HEADER_REPLY)
        await self.events.start()
        await self._feed.start()
        log.info("market %s: replaying the command stream; events published through %d",
                 self.market, self.published_through)
        try:
            # The lease and the status reporter run beside the command loop; a task that
            # fails (a defect: NATS errors are survived inside each) ends the others and
            # the service, and so the process, which is then restarted whole.
            async with asyncio.TaskGroup() as group:
                self._tasks = group
                if self.lease is not None:
                    group.create_task(self.lease.run(), name=f"lease {self.market}")
                if self.replicas is not None:
                    group.create_task(self._report(), name=f"status report {self.market}")
                group.create_task(self._consume(), name=f"commands {self.market}")
        finally:
            await self._stop_serving()
            for subscription in subscriptions:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()
            await self._feed.stop()
            await self.events.stop()

    async def _consume(self) -> None:
        assert self._feed is not None
        while True:
            await self.process(await self._feed.next_batch())

    async def _restore(self, published_through: int) -> int:
        """Start from the newest snapshot, if there is a database; the sequence it includes.

        Never from one past ``published_through``: the commands after it have not had
        their events published, so they must be applied here, not skipped.
        """
        if self.pool is None:
            return 0
        snapshot = await _newest_snapshot(self.pool, self.market, published_through)
        if snapshot is None:
            return 0
        self.engine = snapshot.engine()
        self._accepted = _resting_terms(self.engine)
        self.market_data.book_sequence = snapshot.book_sequence
        log.info("market %s: restored the snapshot at sequence %d", self.market,
                 snapshot.sequence)
        return snapshot.sequence

    # -- the hot path ------------------------------------------------------------------

    async def process(self, batch: list[SequencedCommand]) -> None:
        async with self._lock:
            await self._process(batch)

    async def _process(self, batch: list[SequencedCommand]) -> None:
        apply = self.engine.apply
        market = self.market
        outgoing: list[tuple[SequencedCommand, bytes, list[AnyEvent]]] = []
        started = time.time_ns()  # one clock for the metrics and the spans
        for command in batch:
            try:
                events = apply(decode_command(command.data, command.sequence, command.timestamp))
            except msgspec.DecodeError as exc:  # ValidationError included
                # Only a client that bypassed the gateway can put this here; the engine
                # skips it the same way on every replica and replay.
                log.warning("market %s: command %d is not a command: %s", market,
                            command.sequence, exc)
                UNTRUSTED_SKIPPED.labels("engine", "command").inc()
                events = []
            if command.sequence <= self.published_through:
                self.replayed += 1
                self._remember(events)
                self.market_data.replayed(command.sequence, events)
                if command.sequence == self.published_through and not self.ready.is_set():
                    log.info("market %s: caught up at sequence %d", market, command.sequence)
                    self.ready.set()
                continue
            outgoing.append((command, encode_events(
                EventBatch(market, command.sequence, command.timestamp, events)), events))
        self.metrics.applied(len(batch), (time.time_ns() - started) / 1e9)
        if not outgoing:
            return
        if telemetry.enabled and self.leading:
            trace_batch(market, self.replica, started,
                        [(command, events) for command, _, events in outgoing])
        if not self.leading:
            self.pending.extend(outgoing)
            return
        await self._publish(outgoing)

    async def _publish(self, outgoing: list[tuple[SequencedCommand, bytes, list[AnyEvent]]],
                       ) -> None:
        """Events first (fenced), then replies, private updates and market data."""
        try:
            await self.events.publish([(command.sequence, payload)
                                       for command, payload, _ in outgoing], self.stream_last,
                                      self.epoch, {command.sequence: command.trace
                                                   for command, _, _ in outgoing
                                                   if command.trace})
        except Fenced as exc:
            log.warning("market %s: fenced at epoch %d (%s)", self.market, self.epoch, exc)
            self.pending[:0] = outgoing
            if self.lease is not None:
                await self.lease.step_down()
            else:
                raise
            return
        self.stream_last += len(outgoing)
        self.published_through = outgoing[-1][0].sequence
        self.ready.set()
        publish = self.nc.publish
        market_data = self.market_data
        for command, payload, events in outgoing:
            self._remember(events)  # first: the reply may carry what it remembers
            if command.reply:
                named = self._named_order(events)
                if named is None:
                    await publish(command.reply, payload)
                else:
                    await publish(command.reply, payload, headers={HEADER_ORDER: named})
            market_data.add(command.sequence, command.timestamp, events)
        for subject, message in market_data.messages():
            await publish(subject, message)

    # -- roles -------------------------------------------------------------------------

    async def _promote(self, epoch: int) -> None:
        """The lease made this replica the leader: take up the lead beside the lease's
        task, which must go on renewing while the takeover publishes."""
        self.failovers += 1
        self.last_failover = time.time_ns()
        assert self._tasks is not None, "the lease runs inside the service's task group"
        self._tasks.create_task(self._take_lead(epoch), name=f"take the lead {self.market}")

    async def _take_lead(self, epoch: int) -> None:
        """Lead from exactly where the events stream ends: no gap, no duplicate."""
        async with self._lock:
            try:
                last = await self._last_events_message()
            except NATS_ERRORS as exc:
                log.warning("market %s: cannot read where the events stream ends (%s); "
                            "letting the lease go", self.market, type(exc).__name__)
                if self.lease is not None:
                    await self.lease.step_down()
                return
            if not self._holds(epoch):
                return  # the lease moved on before the takeover began
            self.epoch = epoch
            self.stream_last, published = last
            self._confirm(published)
            self.published_through = published
            self.leading = True
            await self._serve()
            if not self._holds(epoch):  # demoted while subscribing: nothing to stop then
                await self._stop_serving()
                return
            rest, self.pending = self.pending, []
            log.info("market %s: replica %s leads (epoch %d) from sequence %d, %d applied "
                     "commands to publish", self.market, self.replica, epoch, published,
                     len(rest))
            if rest:
                await self._publish(rest)

    def _holds(self, epoch: int) -> bool:
        return self.lease is None or (self.lease.leading and self.lease.epoch == epoch)

    async def _demote(self) -> None:
        self.leading = False
        await self._stop_serving()

    async def _report(self) -> None:
        """Publish this replica's status every second, for the operator and ``status``."""
        assert self.replicas is not None
        while True:
            try:
                info = await self.js.stream_info(command_stream(self.market))
                status = self.status()
                status["lag"] = max(0, info.state.last_seq - self.engine.last_sequence)
                self.metrics.report_lag(status["lag"])
                status["host"] = socket.gethostname()
                await self.replicas.put(f"{self.market}.{self.replica}", _encode(status))
            except NATS_ERRORS as exc:
                log.debug("market %s: status not published: %s", self.market, exc)
            await asyncio.sleep(1.0)

    async def _serve(self) -> None:
        """The leader's subjects: only the leader subscribes, so a request made while no
        replica leads fails at once (no responders) rather than timing out."""
        handlers = {
            book_snapshot_subject(self.market): self._on_snapshot,
            engine_subject(self.market, "status"): self._on_status,
            engine_subject(self.market, "order"): self._on_order,
            engine_subject(self.market, "openOrders"): self._on_open_orders,
            engine_subject(self.market, "switchover"): self._on_switchover,
        }
        self._leader_subscriptions = [await self.nc.subscribe(subject, cb=handler)
                                      for subject, handler in handlers.items()]

    async def _stop_serving(self) -> None:
        subscriptions, self._leader_subscriptions = self._leader_subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _on_switchover(self, msg: Msg) -> None:
        """A planned switchover: hand the lease to a named standby between two batches."""
        if not self.leading or self.lease is None:
            return  # the leader answers
        if not msg.reply:
            return  # nobody to tell the outcome: an admin act is done only when asked
        if len(msg.data) > MAX_REQUEST:
            await msg.respond(_encode({"error": f"a request over {MAX_REQUEST} bytes"}))
            return
        try:
            target = msgspec.json.decode(msg.data, type=SwitchoverRequest).to
        except msgspec.MsgspecError as exc:
            await msg.respond(_encode({"error": str(exc)[:200]}))
            return
        if target == self.replica:
            await msg.respond(_encode({"error": f"{target} leads already"}))
            return
        refusal = await self.hand_over(target)
        if refusal:
            await msg.respond(_encode({"error": refusal}))
            return
        await msg.respond(_encode({"from": self.replica, "to": target, "epoch": self.epoch}))

    async def hand_over(self, target: str) -> str | None:
        """A planned switchover to the standby ``target``, between two batches: None once
        the lease names it, else why not."""
        if not self.leading or self.lease is None:
            return f"{self.replica} does not lead {self.market}"
        if not is_subject(target):  # it names a status subject: no spaces, no wildcards
            return f"{target[:80]!r} is not a replica name"
        refusal = await self._unfit_standby(target)
        if refusal:
            return refusal
        try:
            async with self._lock:  # no batch in flight: the next one is the new leader's
                await self.lease.hand_over(target)
        except NotLeadingError as exc:
            return str(exc)
        except NATS_ERRORS as exc:
            # The lease is as it was, or the handover happened and this leader sees that
            # it lost the lease at its next renewal: either way a leader is found again.
            return f"the lease could not be handed over: {type(exc).__name__}"
        log.info("market %s: handed the lead to %s", self.market, target)
        return None

    async def _unfit_standby(self, target: str) -> str | None:
        """Why ``target`` cannot take the lead now (None: it can): a switchover to a
        replica that is not there, or not caught up, would leave the market leaderless.
        The target itself is asked (its own status subject), not its last report."""
        if self.lease is None:
            return None
        try:
            reply = await self.nc.request(engine_subject(self.market, f"{target}.status"),
                                          b"", timeout=1.0)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            return f"no replica {target} of market {self.market} is running"
        try:
            ready = msgspec.json.decode(reply.data, type=_Readiness).ready
        except msgspec.DecodeError:
            return f"{target} answered with no status"
        if not ready:
            return f"{target} has not caught up yet"
        return None

    async def _on_published(self, msg: Msg) -> None:
        """What the leader stored: a standby forgets the events it no longer needs."""
        if self.leading or msg.headers is None:
            return
        sequence = header_sequence(msg.headers)
        if sequence is None:
            log.warning("market %s: an events message with Tp-Sequence %r; ignored",
                        self.market, str(msg.headers.get(HEADER_SEQUENCE))[:40])
            UNTRUSTED_SKIPPED.labels("engine", "events header").inc()
            return
        if sequence > self.published_through:
            self.published_through = sequence
        self._confirm(sequence)

    def _confirm(self, sequence: int) -> None:
        """Events up to ``sequence`` are in the stream: drop them from ``pending``."""
        pending = self.pending
        if pending and pending[0][0].sequence <= sequence:
            keep = next((index for index, item in enumerate(pending)
                         if item[0].sequence > sequence), len(pending))
            for command, _, events in pending[:keep]:
                self._remember(events)
                self.market_data.replayed(command.sequence, events)
            del pending[:keep]

    async def _last_events_message(self) -> tuple[int, int]:
        """(stream sequence, command sequence) of the events stream's last message.

        The command sequence is the last one whose ``Tp-Sequence`` an engine could have
        written: a message after it without a readable one (someone else wrote it) is
        stepped over, looking back at most ``UNREADABLE_LOOKBACK`` messages."""
        stream = event_stream(self.market)
        try:
            message = await self.js.get_last_msg(stream, self._event_subject)
        except NotFoundError:
            return 0, 0
        last = position = message.seq or 0
        for _ in range(UNREADABLE_LOOKBACK):
            sequence = header_sequence(message.headers)
            if sequence is not None:
                return last, sequence
            log.warning("market %s: events message %d has no readable Tp-Sequence; "
                        "looking at the one before", self.market, position)
            UNTRUSTED_SKIPPED.labels("engine", "events header").inc()
            position -= 1
            if position < 1:
                break
            try:
                message = await self.js.get_msg(stream, position)
            except NotFoundError:
                break  # before the stream's first message: nothing is known published
        return last, 0

    def _remember(self, events: list[AnyEvent]) -> None:
        """Keep the last state of finished and rejected orders for status queries.

        A finished order is described whole, with the terms it was accepted with (its
        price and quantity as its last replace left them). A rejected order is a refused
        place; the refusal of a cancel or a replace is not an order's state, even when it
        named the order by its client order id. Called for every command in command
        order, once, whatever the replica's role.
        """
        quantity = self.formatter.quantity
        for event in events:
            if type(event) is OrderAccepted:
                self._accepted[event.order_id] = event
            elif type(event) is OrderReplaced:
                self._replaced[event.order_id] = event
            elif type(event) is OrderUpdate and event.status in _TERMINAL:
                record: dict[str, Any] = {
                    "orderId": event.order_id, "clientOrderId": event.client_order_id,
                    "status": event.status.value,
                    "filledQuantity": quantity(event.filled_quantity),
                    "remainingQuantity": "0",
                }
                accepted = self._accepted.pop(event.order_id, None)
                replaced = self._replaced.pop(event.order_id, None)
                if accepted is not None:
                    record.update(self._terms(
                        accepted.side, accepted.order_type,
                        replaced.price if replaced else accepted.price,
                        replaced.quantity if replaced else accepted.quantity,
                        accepted.quote_amount, accepted.time_in_force, accepted.post_only,
                        accepted.stp))
                if event.reason is not None:
                    record["reason"] = event.reason.name.lower()
                self._remember_order(event.account, event.order_id, event.client_order_id,
                                     record)
            elif type(event) is OrderRejected and event.new_order and event.client_order_id:
                self._remember_order(event.account, 0, event.client_order_id, {
                    "orderId": 0, "clientOrderId": event.client_order_id,
                    "status": "rejected", "filledQuantity": "0", "remainingQuantity": "0",
                    "code": int(event.code), "name": event.code.name, "reason": event.reason,
                })

    def _terms(self, side: Side, order_type: OrderType, price: int, quantity: int,
               quote_amount: int, time_in_force: TimeInForce, post_only: bool,
               stp: SelfTradePrevention) -> dict[str, Any]:
        """What an order is, as replies show it: ``side``, ``price`` (none for a market
        order), ``quantity`` (none for a market buy by quote amount: ``quoteAmount``).
        ``type``, ``timeInForce``, ``postOnly`` and ``stp`` are for the gateway, which
        compares them with a retried place (they are not part of a reply's order)."""
        terms: dict[str, Any] = {"side": side.value}
        if price:
            terms["price"] = self.formatter.price(price)
        if quantity:
            terms["quantity"] = self.formatter.quantity(quantity)
        if quote_amount:
            terms["quoteAmount"] = self.formatter.notional(quote_amount)
        terms.update({"type": order_type.value, "timeInForce": time_in_force.value,
                      "postOnly": post_only, "stp": stp.value})
        return terms

    def _named_order(self, events: list[AnyEvent]) -> str | None:
        """For a command's reply: the order a cancel finished, or the finished order a
        cancel or replace named and found not open (301), as remembered — what the
        events do not say of it (side, price, quantity). None for anything else.

        A cancel-all's first order looks like a cancel's; its reply carries that order
        too, and the gateway does not use it."""
        if not events:
            return None
        first = events[0]
        record: dict[str, Any] | None = None
        if type(first) is OrderUpdate and first.status is OrderStatus.CANCELED:
            record = self.recent.get((first.account, first.order_id))
        elif (type(first) is OrderRejected and first.code is RejectCode.UNKNOWN_ORDER
              and first.command in ("cancel", "replace")):
            record = self._finished(first.account, first.order_id, first.client_order_id)
        return None if record is None else _encode(record).decode()

    def _finished(self, account: str, order_id: int,
                  client_order_id: str) -> dict[str, Any] | None:
        """A finished (or refused) order from memory, by id or by client order id."""
        if not order_id and client_order_id:
            order_id = self.recent_by_client_id.get((account, client_order_id), 0)
        return self.recent.get((account, order_id)) if order_id else None

    def _remember_order(self, account: str, order_id: int, client_order_id: str,
                        record: dict[str, Any]) -> None:
        self._rejections += 0 if order_id else 1
        key = (account, order_id or -self._rejections)  # a rejected order has no id
        self.recent[key] = record
        if client_order_id:
            self.recent_by_client_id[(account, client_order_id)] = key[1]
        if len(self.recent) > RECENT_ORDERS:
            (old_account, old_key), old = self.recent.popitem(last=False)
            old_client_key = (old_account, old.get("clientOrderId", ""))
            if self.recent_by_client_id.get(old_client_key) == old_key:
                del self.recent_by_client_id[old_client_key]

    # -- requests ----------------------------------------------------------------------

    def order_status(self, query: StatusQuery) -> dict[str, Any] | None:
        """An order's current state: open in the book, or recently finished.

        By client order id (which may be used again once its order finished): the open
        order that carries it, else the one that carried it and ended last (a refused
        place ends as it is sequenced), as the recorder's history answers too.
        """
        order = self.engine.open_order(query.account, query.order_id, query.client_order_id)
        if order is not None:
            return self._open_order(order)
        return self._finished(query.account, query.order_id, query.client_order_id)

    def open_orders(self, account: str) -> list[dict[str, Any]]:
        owner = self.engine.accounts.get(account)
        if owner is None:
            return []
        return [self._open_order(order)
                for order in sorted(owner.by_id.values(), key=lambda order: order.order_id)]

    def _open_order(self, order: Order) -> dict[str, Any]:
        """An order in the book, as status and open-orders replies show it (a resting
        order is a GTC limit order)."""
        quantity = self.formatter.quantity
        return {
            "orderId": order.order_id, "clientOrderId": order.client_order_id,
            "status": open_status(order.filled),
            **self._terms(order.side, OrderType.LIMIT, order.price, order.quantity, 0,
                          TimeInForce.GTC, order.post_only, order.stp),
            "filledQuantity": quantity(order.filled),
            "remainingQuantity": quantity(order.remaining),
        }

    async def _on_open_orders(self, msg: Msg) -> None:
        await self._answer(msg, lambda query: {"orders": self.open_orders(query.account)})

    async def _on_order(self, msg: Msg) -> None:
        await self._answer(msg, lambda query: {"order": self.order_status(query)})

    async def _answer(self, msg: Msg,
                      answer: Callable[[StatusQuery], dict[str, Any]]) -> None:
        """A query about an account's orders, answered from the live book."""
        try:
            query = msgspec.json.decode(msg.data, type=StatusQuery)
        except msgspec.MsgspecError as exc:
            await msg.respond(_encode({"error": str(exc)}))
            return
        if not self.leading:
            return  # the leader answers
        if not self.ready.is_set():
            await msg.respond(_encode({"error": "recovering"}))
            return
        await msg.respond(_encode({"sequence": self.engine.last_sequence, **answer(query)}))

    async def _on_snapshot(self, msg: Msg) -> None:
        if not self.leading:
            return  # the leader answers
        if not is_inbox(msg.reply):
            log.warning("%s: book snapshot request with reply subject %r; ignored",
                        self.market, msg.reply[:120])
            UNTRUSTED_SKIPPED.labels("engine", "reply subject").inc()
            return
        if not self.ready.is_set():
            await msg.respond(_encode({"error": "recovering", "market": self.market}))
            return
        depth = 1_000_000
        book = self.engine.l2(depth)
        price, quantity = self.formatter.price, self.formatter.quantity
        await msg.respond(_encode({
            "market": self.market, "sequence": self.engine.last_sequence,
            "mode": self.engine.mode.value,
            "bids": [[price(level.price), quantity(level.quantity)] for level in book.bids],
            "asks": [[price(level.price), quantity(level.quantity)] for level in book.asks],
        }))

    async def _on_status(self, msg: Msg) -> None:
        """The market's status subject is the leader's; ``<market>.<replica>.status`` anyone's."""
        if self.leading or msg.subject.endswith(f".{self.replica}.status"):
            await msg.respond(_encode(self.status(with_hash=msg.data == b"hash")))

    def status(self, *, with_hash: bool = False) -> dict[str, Any]:
        engine = self.engine
        status: dict[str, Any] = {
            "market": self.market, "replica": self.replica, "pid": os.getpid(),
            "role": "leader" if self.leading else "standby", "epoch": self.epoch,
            "pending": len(self.pending), "ready": self.ready.is_set(),
            "failovers": self.failovers, "lastFailover": self.last_failover,
            "sequence": engine.last_sequence, "publishedThrough": self.published_through,
            "bookSequence": self.market_data.book_sequence, "mode": engine.mode.value,
            "nextOrderId": engine.next_order_id, "nextTradeId": engine.next_trade_id,
            "replayed": self.replayed,
        }
        if with_hash:
            status["stateHash"] = engine.state_hash()
        return status


def _resting_terms(engine: Engine) -> dict[int, OrderAccepted]:
    """How the orders resting in a restored book were accepted, as far as it says: a
    resting order is a GTC limit order, its price and quantity as its last replace left
    them (the replace itself is not in a snapshot)."""
    terms: dict[int, OrderAccepted] = {}
    for owner in engine.accounts.values():
        for order in owner.by_id.values():
            terms[order.order_id] = OrderAccepted(
                order.order_id, order.account, order.client_order_id, order.side,
                OrderType.LIMIT, order.price, order.quantity, 0, TimeInForce.GTC,
                order.post_only, order.stp)
    return terms


async def _newest_snapshot(pool: asyncpg.Pool, market: str, at_most: int) -> Snapshot | None:
    """The newest usable snapshot; waits for PostgreSQL, which holds what the stream may not."""
    return await with_connection(
        pool, lambda connection: latest_snapshot(connection, market, at_most),
        f"market {market} (its snapshot)")
