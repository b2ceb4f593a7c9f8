"""One ledger shard's service: its command stream in, balances and forwarded orders out.

``LedgerService`` runs one replica of a shard (docs/ledger.md) with the engines' own
machinery: the shard's command stream through a ``StreamFeed``, the pure ``Ledger``
applied by ``ledger_path.LedgerPath`` (a ``replica.Replica``), a lease in ``tp-leases``
under ``ledger.<shard>`` and ``leadership.Leadership`` for the takeover. Only the
leader acts on the world:

- it forwards the orders and replaces it funded, and answers the gateway (the path);
- it follows every funded market's events stream and sequences the events messages
  that concern its accounts in its own stream, as many to a ``settle`` as came in
  together (``settle:<market>:<first>-<last>``, stored once);
- it defines to the ledger the markets of the markets bucket whose assets are defined,
  and their fee changes;
- on taking the lead, it forwards again what is still in flight, under the same message
  ids (a copy its market's stream already holds is dropped);
- it answers ``tp.ledger.<shard>.balances`` and ``.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.feed import SequencedCommand, StreamFeed, gateway_inbox
from tradeplane_engine.ledger import (
    CLEARING,
    FEES,
    DefineMarket,
    Forward,
    FundOrders,
    FundReplace,
    Ledger,
    Report,
    Settle,
    named,
)
from tradeplane_engine.service.events import EventsPublisher
from tradeplane_engine.service.leadership import Leadership
from tradeplane_engine.service.ledger_path import (
    LedgerPath,
    Together,
    account_balances,
    funded_order,
)
from tradeplane_engine.service.replica import in_groups
from tradeplane_engine.service.watchdog import Watchdog
from tradeplane_engine.service.writer import Outbound, StreamWriter
from tradeplane_engine.store.database import with_connection
from tradeplane_engine.store.ledger_snapshots import latest_ledger_snapshot
from tradeplane_engine.streams import StreamSettings, ensure_stream
from tradeplane_engine.wire import (
    HEADER_REPLY,
    MAX_REQUEST,
    MarketDefinition,
    batch_parts,
    decode_events,
    decode_ledger_command,
    definition_entry,
    encode_ledger_command,
    event_stream,
    is_account,
    ledger_command_stream,
    ledger_event_stream,
    ledger_event_subject,
    ledger_name,
    ledger_subject,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

SETTLE_BYTES = 32 * 1024
"""A ``settle`` carries commands' events up to about this many bytes of the market's
events messages (one command's at least). What settling them publishes must stay well
below NATS's default payload limit of 1 MiB: for a sweep of fifty trades with both
sides in the shard it is about as large as what it reads (16.5 KB in, 15.9 KB out:
a ``Fill`` per side of a trade; three times as much when each leg was a movement)."""
STREAM_WAIT = 1.0
"""Seconds between two looks for a funded market's events stream not made yet."""


class BalancesQuery(msgspec.Struct, forbid_unknown_fields=True):
    account: str


class StatusQuery(msgspec.Struct, forbid_unknown_fields=True):
    audit: bool = False
    """Whether to go over the whole state: its hash and its audit."""


class LedgerService(Watchdog):
    """Runs one replica of one ledger shard. ``run()`` until cancelled."""

    def __init__(self, nc: Client, shard: int, shards: int,
                 settings: StreamSettings | None = None, *, replica: str = "solo",
                 leases: KeyValue | None = None, batch: int = 512,
                 pool: asyncpg.Pool | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.shard = shard
        self.name = self.label = ledger_name(shard)
        self.start_watch()
        self.settings = settings or StreamSettings()
        self.replica = replica
        self.ledger = Ledger(shard, shards)
        self.pool = pool
        """PostgreSQL, for snapshots to start from (None: replay the whole stream)."""
        self._batch = batch
        self.events = EventsPublisher(nc, self.name, stream=ledger_event_stream(shard),
                                      subject=ledger_event_subject(shard))
        self.forwarder = StreamWriter(nc, f"{self.name} forwards")
        self.settler = StreamWriter(nc, f"{self.name} settlements")
        self.path = LedgerPath(nc, shard, replica, self.ledger, self.events, self.forwarder,
                               leading=leases is None)  # without a lease: leads alone
        self.leadership = Leadership(nc, self.name, replica, self.path, leases,
                                     on_lead=self._lead, on_stand_by=self._stand_by)
        if self.leadership.lease is not None:
            self.path.step_down = self.leadership.lease.step_down
        self.definitions: dict[str, MarketDefinition] = {}
        """The markets bucket as last seen."""
        self._changed = asyncio.Event()
        """Set when a definition or an asset changed: the leader defines markets again."""
        self._proposed: set[str] = set()
        self._duties: asyncio.Task[None] | None = None
        self._requests: list[Subscription] = []

    @property
    def ready(self) -> asyncio.Event:
        return self.path.ready

    @property
    def leading(self) -> bool:
        return self.path.leading

    # -- running ------------------------------------------------------------------------

    async def run(self, markets: KeyValue) -> None:
        await self.watched(self._run(markets))

    async def _run(self, markets: KeyValue) -> None:
        for config in self.settings.ledger_stream_configs(self.shard):
            await ensure_stream(self.js, config)
        path = self.path
        path.stream_last, path.published_through = await path.last_events_message()
        start = await self._restore(path.published_through)
        if path.published_through <= start:
            path.ready.set()
        subscription = await self.nc.subscribe(ledger_event_subject(self.shard),
                                               cb=path.on_published)
        feed = StreamFeed(self.nc, ledger_command_stream(self.shard), start + 1,
                          batch=self._batch, reply_header=HEADER_REPLY, on_wait=self.turned)
        for part in (self.events, self.forwarder, self.settler, feed):
            await part.start()
        log.info("%s: replaying its command stream; events published through %d", self.name,
                 path.published_through)
        try:
            # As a market's service: a task that fails (a defect; NATS errors are survived
            # inside each) ends the others and the service, and so the process.
            async with asyncio.TaskGroup() as group:
                self.leadership.tasks = group
                if self.leadership.lease is not None:
                    group.create_task(self.leadership.lease.run(), name=f"lease {self.name}")
                group.create_task(self._follow_markets(markets), name=f"markets {self.name}")
                group.create_task(self._consume(feed), name=f"commands {self.name}")
                if self.leading:
                    await self._lead()
        finally:
            await self._stand_by()
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()
            for part in (feed, self.settler, self.forwarder, self.events):
                await part.stop()

    async def _restore(self, published_through: int) -> int:
        """Start from the newest snapshot (with a database) that goes no further than the
        events stream: the commands after it still need their events published."""
        if self.pool is None:
            return 0
        snapshot = await with_connection(
            self.pool, lambda connection: latest_ledger_snapshot(connection, self.shard,
                                                                 published_through),
            f"{self.name} (its snapshot)")
        if snapshot is None:
            return 0
        ledger = snapshot.ledger()
        if (ledger.shard, ledger.shards) != (self.ledger.shard, self.ledger.shards):
            raise ValueError(f"{self.name}: the snapshot at {snapshot.sequence} is shard "
                             f"{ledger.shard} of {ledger.shards}, not of "
                             f"{self.ledger.shards}: the shard count never changes")
        self.ledger = self.path.ledger = ledger
        log.info("%s: restored the snapshot at sequence %d", self.name, snapshot.sequence)
        return snapshot.sequence

    async def _consume(self, feed: StreamFeed) -> None:
        ledger = self.ledger
        self.turned()
        while True:
            batch = await feed.next_batch()
            known = (len(ledger.decimals), len(ledger.terms))
            self.in_hand = len(batch)
            await self.path.process(batch)
            self.in_hand = 0
            self.turned()
            if (len(ledger.decimals), len(ledger.terms)) != known:
                self._changed.set()

    async def _follow_markets(self, kv: KeyValue) -> None:
        """Keep ``definitions`` as the markets bucket says, watching again after a failure."""
        while True:
            try:
                watcher = await kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is not None:
                            self._saw_definition(entry.key, entry.value, entry.operation)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except NATS_ERRORS as exc:
                log.warning("%s: the markets bucket's watch failed (%s); watching again",
                            self.name, type(exc).__name__)
            await asyncio.sleep(STREAM_WAIT)

    def _saw_definition(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self.definitions.pop(key, None)
            return
        try:
            self.definitions[key] = definition_entry(key, value)
        except (ValueError, ArithmeticError) as exc:
            log.error("%s: market %s: definition refused (%s)", self.name, key[:80],
                      str(exc)[:200])
            UNTRUSTED_SKIPPED.labels("ledger", "market definition").inc()
            return
        self._changed.set()

    # -- leading ------------------------------------------------------------------------

    async def _lead(self) -> None:
        handlers = {ledger_subject(self.shard, "balances"): self._on_balances,
                    ledger_subject(self.shard, "status"): self._on_status}
        self._requests = [await self.nc.subscribe(subject, cb=handler)
                          for subject, handler in handlers.items()]
        assert self.leadership.tasks is not None
        self._duties = self.leadership.tasks.create_task(self._lead_duties(),
                                                         name=f"duties {self.name}")

    async def _stand_by(self) -> None:
        requests, self._requests = self._requests, []
        for subscription in requests:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        if self._duties is not None:
            self._duties.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._duties
            self._duties = None

    async def _lead_duties(self) -> None:
        """What only the leader does, until it stops leading (then it is cancelled)."""
        await self.ready.wait()
        await self._forward_in_flight()
        followed: set[str] = set()
        async with asyncio.TaskGroup() as group:
            while True:
                self._changed.clear()
                await self._define_markets()
                for market in sorted(set(self.ledger.terms) - followed):
                    followed.add(market)
                    group.create_task(self._settle(market), name=f"settle {market}")
                await self._changed.wait()

    async def _forward_in_flight(self) -> None:
        """Forward again what the last leader may not have: the same message ids, so a
        copy already in a market's stream is dropped (docs/ledger.md)."""
        outbound: list[Outbound] = []
        by_sequence: dict[int, list[int]] = {}
        for sequence, index in self.ledger.in_flight():
            by_sequence.setdefault(sequence, []).append(index)
        for sequence, indices in by_sequence.items():
            message = await self.js.get_msg(ledger_command_stream(self.shard), sequence)
            command = decode_ledger_command(message.data or b"", sequence, 0)
            # A fundOrder's or fundReplace's answer subject is its message's header,
            # checked as the feed checks it.
            alone = gateway_inbox((message.headers or {}).get(HEADER_REPLY),
                                  f"ledger command {sequence}", "reply", "ledger")
            forwards: list[tuple[int, Forward, str | None]] = []
            for index in indices:
                reply = alone
                if isinstance(command, FundReplace):
                    event = Forward(command.market, command.replace)
                else:  # the ledger only says funded orders and replaces are in flight
                    market, place = funded_order(command, index)
                    event = Forward(market, named(place, self.shard, sequence, index))
                    if isinstance(command, FundOrders):
                        reply = gateway_inbox(command.orders[index].reply or None,
                                              f"ledger command {sequence}, order {index}",
                                              "reply", "ledger")
                forwards.append((index, event, reply))
            # The same messages as the first forward: what went together goes together.
            together = Together(self.shard, sequence, command)
            for index, event, reply in forwards:
                together.add(index, [event], reply, None)
            outbound.extend(together.message(index)
                            or self.path.forward(sequence, event, reply, index=index)
                            for index, event, reply in forwards)
        if outbound:
            log.info("%s: forwarding %d funded commands in flight again", self.name,
                     len(outbound))
            await self.path.write_forwards(outbound)

    async def _define_markets(self) -> None:
        """Define to the ledger each market whose assets it knows, as its definition says."""
        ledger = self.ledger
        outbound: list[Outbound] = []
        for name, definition in sorted(self.definitions.items()):
            if definition.base not in ledger.decimals or definition.quote not in ledger.decimals:
                continue
            fees = _fees(definition)
            if fees is None:
                continue
            command = DefineMarket(0, 0, market=name, base=definition.base,
                                   quote=definition.quote, tick_size=definition.tick_size,
                                   lot_size=definition.lot_size, maker_bps=fees[0],
                                   taker_bps=fees[1])
            terms = ledger.terms.get(name)
            if terms is not None and (terms.maker_bps, terms.taker_bps) == (
                    command.maker_bps, command.taker_bps):
                continue
            digest = hashlib.sha256(encode_ledger_command(command)).hexdigest()[:16]
            key = f"define:{name}:{digest}"
            if key in self._proposed:
                continue  # sequenced already: applied, or refused (and logged) as it is
            self._proposed.add(key)
            outbound.append(self.path.own(command, key))
        if outbound:
            await self.settler.write(outbound)

    async def _settle(self, market: str) -> None:
        """Sequence each events message of ``market`` that concerns this shard's accounts
        as a ``settle``, from where the ledger last settled, for as long as it leads."""
        stream = event_stream(market)
        while True:
            try:
                await self.js.stream_info(stream)
                break
            except NotFoundError:
                await asyncio.sleep(STREAM_WAIT)  # its engine has not made it yet
            except NATS_ERRORS as exc:
                log.warning("%s: %s not readable yet (%s)", self.name, stream,
                            type(exc).__name__)
                await asyncio.sleep(STREAM_WAIT)
        # From the last message settled, again: a message's commands may have been
        # settled in two ``settle`` commands, and the leader failed between them.
        feed = StreamFeed(self.nc, stream, max(1, self.ledger.positions.get(market, 0)),
                          batch=256)
        await feed.start()
        try:
            while True:
                outbound = self._settlements(market, await feed.next_batch())
                if outbound:
                    await self.settler.write(outbound)
        finally:
            await feed.stop()

    def _settlements(self, market: str, messages: list[SequencedCommand]) -> list[Outbound]:
        """The ``settle`` commands for consecutive events messages of ``market``, under
        the message id ``settle:<market>:<first>-<last>`` (the command sequences they
        report on), so a resend is stored once. A new leader that groups them otherwise
        settles nothing twice: the ledger settles each report once."""
        reports = [report for message in messages
                   for report in self._reports(market, message.sequence, message.data)]
        return [self._settle_command(market, group) for group in settle_groups(reports)]

    def _settle_command(self, market: str, reports: list[Report]) -> Outbound:
        settle = Settle(0, 0, market=market, reports=reports)
        return self.path.own(settle, f"settle:{market}:{reports[0].events_sequence}-"
                                     f"{reports[-1].events_sequence}")

    def _reports(self, market: str, position: int,
                 data: bytes) -> list[tuple[Report, int]]:
        """The commands' order events in an events message that concern this shard's
        accounts and are not settled yet, each with its size; none (logged) for a message
        that is not an events message of ``market``."""
        try:
            parts = batch_parts(data)
            batches = [(decode_events(part), len(part)) for part in parts]
        except msgspec.DecodeError as exc:
            log.warning("%s: %s message %d is not an events message (%s); skipped",
                        self.name, event_stream(market), position, str(exc)[:120])
            UNTRUSTED_SKIPPED.labels("ledger", "events message").inc()
            return []
        if any(batch.market != market for batch, _ in batches):
            log.warning("%s: %s message %d holds another market's events; skipped",
                        self.name, event_stream(market), position)
            UNTRUSTED_SKIPPED.labels("ledger", "events message").inc()
            return []
        settled = self.ledger.settled_through(market)
        concerns = self.ledger.concerns
        reports: list[tuple[Report, int]] = []
        for batch, size in batches:
            events = [event for event in batch.events if concerns(event)]
            if not events or batch.sequence <= settled:
                continue
            if reports and reports[-1][0].events_sequence == batch.sequence:
                # The commands of one command-stream message share its sequence, which
                # is what settlement counts by: one report for all of them, in order.
                report, total = reports[-1]
                reports[-1] = (Report(report.events_sequence, position,
                                      [*report.events, *events]), total + size)
            else:
                reports.append((Report(batch.sequence, position, events), size))
        return reports

    # -- requests -----------------------------------------------------------------------

    async def _on_balances(self, msg: Msg) -> None:
        await self._answer(msg, "balances", self._balances)

    async def _on_status(self, msg: Msg) -> None:
        # Only the administrator may ask (docs/security.md): any reply subject it names.
        await self._answer(msg, "status", lambda data: msgspec.json.encode(self.status(
            audit=msgspec.json.decode(data or b"{}", type=StatusQuery).audit)))

    def _balances(self, data: bytes) -> bytes:
        query = msgspec.json.decode(data, type=BalancesQuery)
        if not is_account(query.account) or not self.ledger.owns(query.account):
            raise ValueError(f"account {query.account[:64]!r} is not this shard's")
        return msgspec.json.encode(account_balances(self.ledger, query.account))

    async def _answer(self, msg: Msg, what: str, answer: Callable[[bytes], bytes]) -> None:
        """Answer a request on its reply subject with what ``answer`` makes of its body;
        one too large or that is not such a request with ``{"error"}``, logged and
        counted."""
        if not msg.reply:
            return
        try:
            if len(msg.data) > MAX_REQUEST:
                raise ValueError("request too large")
            reply = answer(msg.data)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("%s: a %s request refused (%s)", self.name, what, str(exc)[:120])
            UNTRUSTED_SKIPPED.labels("ledger", f"{what} request").inc()
            reply = msgspec.json.encode({"error": str(exc)[:200]})
        with contextlib.suppress(*NATS_ERRORS):
            await self.nc.publish(msg.reply, reply)

    def status(self, *, audit: bool = False) -> dict[str, Any]:
        """The shard as this replica holds it; with ``audit``, also its state hash and
        audit (what ``tradeplane audit`` reads), which go over the whole state in the
        shard's loop: it funds nothing meanwhile (docs/ledger.md)."""
        ledger = self.ledger
        assets = sorted(set(ledger.decimals))
        checked: dict[str, Any] = (
            {"stateHash": ledger.state_hash(), "audit": ledger.audit()} if audit else {})
        return {
            "shard": self.shard, "shards": ledger.shards, "replica": self.replica,
            "assets": dict(sorted(ledger.decimals.items())),
            "leading": self.leading, "sequence": ledger.sequence, **checked,
            "settled": dict(sorted(ledger.settled.items())),
            "clearing": {asset: ledger.balance(CLEARING, asset)[0] for asset in assets},
            "fees": {asset: ledger.balance(FEES, asset)[0] for asset in assets},
            "deposited": dict(sorted(ledger.deposited.items())),
            "withdrawn": dict(sorted(ledger.withdrawn.items())),
            "decimals": dict(sorted(ledger.decimals.items())),
        }


def settle_groups(reports: list[tuple[Report, int]],
                  limit: int = SETTLE_BYTES) -> list[list[Report]]:
    """Consecutive reports, given with the size of their events message, in as few
    groups as keep each under ``limit`` bytes (a larger one alone)."""
    return [[report for report, _ in group]
            for group in in_groups(reports, lambda item: item[1], limit)]


def _fees(definition: MarketDefinition) -> tuple[int, int] | None:
    """(maker, taker) basis points of a definition; None, logged, when they are not
    integers (the CRD says they are: such a definition was not written by the operator)."""
    fees = definition.fees or {}
    maker, taker = fees.get("makerBps", 0), fees.get("takerBps", 0)
    if all(isinstance(value, int) and not isinstance(value, bool) for value in (maker, taker)):
        return maker, taker
    log.error("market %s: fees %r are not basis points; not funded", definition.name,
              str(fees)[:120])
    UNTRUSTED_SKIPPED.labels("ledger", "market definition").inc()
    return None
