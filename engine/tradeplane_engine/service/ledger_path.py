"""A ledger shard's hot path: apply each batch of ledger commands, then publish what
it did (docs/ledger.md).

For each batch the feed hands over, every command is applied to the pure ledger
(``tradeplane_engine.ledger``); then, once the shard's events stream has stored what
they did (``replica.Replica``; a message covers consecutive commands, ``messages``),
the leader:

1. forwards every funded order and replace to its market's command stream, under the
   message id ``ledger.<shard>:<sequence>``, with the gateway's ``Tp-Reply`` (the
   engine's result goes straight to the gateway) — and relays the market stream's
   acknowledgement to the gateway's ``Tp-Ack`` (a gateway's of the whole batch in one
   message, where its subject asks for that: ``answers.Answers``);
2. answers a refused order or replace on its ``Tp-Ack`` (``Tp-Refused``, a
   ``LedgerRefusal``), and an administrator's command on its ``Tp-Reply`` (the events);
3. publishes the balances of every account that moved, on ``tp.acct.<account>.balances``.
"""

from __future__ import annotations

import functools
import logging
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.client import Client

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.core.commands import Place
from tradeplane_engine.core.market import UnitFormatter, format_decimal
from tradeplane_engine.feed import SequencedCommand, gateway_inbox, traceparent
from tradeplane_engine.ledger import (
    SYSTEM_ACCOUNTS,
    AnyLedgerCommand,
    AnyLedgerEvent,
    DefineAsset,
    Deposit,
    Duplicate,
    Fill,
    Forward,
    FundOrder,
    FundOrders,
    FundReplace,
    Ledger,
    Movement,
    Refused,
    Unsent,
    Withdraw,
    named,
)
from tradeplane_engine.ledger_commands import ledger_command
from tradeplane_engine.service.answers import Answers
from tradeplane_engine.service.events import EventsPublisher
from tradeplane_engine.service.replica import Outgoing, Replica, grouped_messages
from tradeplane_engine.service.writer import Outbound, StreamWriter
from tradeplane_engine.wire import (
    GROUPED_ACKS,
    GROUPED_BYTES,
    HEADER_COMMANDS,
    HEADER_FUNDED,
    HEADER_MESSAGE_ID,
    HEADER_REPLY,
    MAX_COMMANDS,
    LedgerBatch,
    LedgerRefusal,
    LedgerSource,
    PubAck,
    balances_subject,
    command_stream,
    command_subject,
    decode_ledger_command,
    decode_pub_ack,
    encode_command,
    encode_commands,
    encode_ledger_command,
    encode_ledger_events,
    ledger_command_stream,
    ledger_command_subject,
    ledger_event_stream,
    ledger_event_subject,
    ledger_name,
    order_message_id,
)
from tradeplane_shared.telemetry import TRACEPARENT

log = logging.getLogger(__name__)

type Applied = tuple[AnyLedgerCommand | None, list[AnyLedgerEvent]]

ADMINISTRATORS = (DefineAsset, Deposit, Withdraw)
"""The commands an administrator's tool waits for the outcome of (``ledger_tools``)."""


class Balances(msgspec.Struct, frozen=True):
    available: str
    held: str


class AccountBalances(msgspec.Struct, frozen=True):
    """An account's balances in decimal strings, per asset: what ``balances`` answers
    and ``tp.acct.<account>.balances`` carries (docs/protocol.md)."""

    account: str
    sequence: int
    """The ledger sequence they are as of."""
    balances: dict[str, Balances]


def account_balances(ledger: Ledger, account: str) -> AccountBalances:
    balances = {}
    for asset, (available, held) in ledger.account_balances(account).items():
        units = _units(ledger.decimals.get(asset, 0))
        balances[asset] = Balances(_signed(units, available), _signed(units, held))
    return AccountBalances(account, ledger.sequence, balances)


def _signed(units: UnitFormatter, amount: int) -> str:
    """A trader's amount is never negative (the audit says so if it were): shown as it is."""
    return units(amount) if amount >= 0 else f"-{units(-amount)}"


@functools.cache
def _units(decimals: int) -> UnitFormatter:
    """Whole units of an asset of ``decimals`` as decimal strings, in integers only."""
    return UnitFormatter(format_decimal(Decimal(1).scaleb(-decimals)))


def event_messages(outgoing: Outgoing, limit: int = GROUPED_BYTES) -> list[tuple[int, bytes]]:
    """A shard's events messages: as ``replica.grouped_messages``, each also ending at an
    administrator's command, so its ``Tp-Sequence`` is that command's, where ``tradeplane
    deposit`` looks for it."""
    return grouped_messages(outgoing, limit,
                            lambda item: isinstance(item[2][0], ADMINISTRATORS))


def forward_message_id(shard: int, sequence: int) -> str:
    """A funded command's message id in its market's command stream: a new leader's
    second forward of it is stored once."""
    return f"{ledger_name(shard)}:{sequence}"


def funded_id(shard: int, sequence: int, index: int = 0) -> str:
    """What names a funding (``Tp-Funded`` on its forward): ``<shard>:<sequence>``, and
    ``-<index>`` after it for an order of a ``fundOrders`` but its first."""
    return f"{shard}:{sequence}" if not index else f"{shard}:{sequence}-{index}"


def together_message_id(shard: int, sequence: int, market: str, part: int) -> str:
    """The message id of the orders of a ``fundOrders`` forwarded together to ``market``
    (``part``: which ``MAX_COMMANDS`` of its orders, by their place in it): a new
    leader's second forward of them is stored once. No trader's order id has two
    colons."""
    return f"{ledger_name(shard)}:{sequence}:{market}:{part}"


class Together:
    """The orders of one ``fundOrders`` that go to their markets together: those its
    gateway named and the ledger held (a retry of a trader's ``clientOrderId``, or a
    ``duplicate``, keeps a message of its own, under its own id). They go in one
    command-stream message of several commands per market, and per ``MAX_COMMANDS`` of
    the ``fundOrders``'s orders (by their place in it, so a new leader forwarding again
    what is still in flight makes the same messages, under the same ids)."""

    def __init__(self, shard: int, sequence: int, command: AnyLedgerCommand | None) -> None:
        self.shard = shard
        self.sequence = sequence
        self._orders = command.orders if isinstance(command, FundOrders) else None
        self._keys: dict[int, tuple[str, int]] = {}
        """The message of each order that goes together, by its place."""
        self._entries: dict[tuple[str, int], list[tuple[bytes, str, str]]] = {}
        self._messages: dict[tuple[str, int], Outbound] = {}

    def add(self, index: int, events: list[AnyLedgerEvent], reply: str | None,
            trace: str | None) -> None:
        """Order ``index`` with its events: it goes together if its gateway named it and
        the ledger held it for this funding (a ``Forward`` without a ``Duplicate``)."""
        if self._orders is None or not self._orders[index].named_by_gateway:
            return
        forward = next((event for event in events if isinstance(event, Forward)), None)
        if forward is None or any(isinstance(event, Duplicate) for event in events):
            return
        key = self._keys[index] = (forward.market, index // MAX_COMMANDS)
        self._entries.setdefault(key, []).append(
            (encode_command(forward.command), reply or "", trace or ""))

    def message(self, index: int) -> Outbound | None:
        """The message that carries order ``index``, or None if it goes alone."""
        key = self._keys.get(index)
        if key is None:
            return None
        message = self._messages.get(key)
        if message is None:
            entries = self._entries[key]
            message = self._messages[key] = Outbound(
                command_subject(key[0]), encode_commands(entries),
                {HEADER_MESSAGE_ID: together_message_id(self.shard, self.sequence, *key),
                 HEADER_FUNDED: funded_id(self.shard, self.sequence),
                 HEADER_COMMANDS: str(len(entries))},
                command_stream(key[0]))
        return message


type Funding = tuple[int, str | None, str | None, str | None, list[AnyLedgerEvent]]
"""One funded order or replace of a command: (its place in a ``fundOrders``, or 0; where
its acknowledgement goes; where its market's result goes; its ``traceparent``; its
events)."""


def fundings(command: SequencedCommand, decoded: AnyLedgerCommand | None,
             events: list[AnyLedgerEvent]) -> list[Funding]:
    """The orders and replaces a command funds, each with its events: a ``fundOrders``'s
    orders (each one's events end with its ``Forward`` or ``Refused``, as
    ``Ledger.apply`` gives them), or the one of a ``fundOrder`` or ``fundReplace`` (its
    answers' subjects in the message's headers); none for any other command."""
    if isinstance(decoded, FundOrder | FundReplace):
        return [(0, command.ack, command.reply, command.trace, events)]
    if not isinstance(decoded, FundOrders):
        return []
    groups: list[list[AnyLedgerEvent]] = []
    group: list[AnyLedgerEvent] = []
    for event in events:
        group.append(event)
        if isinstance(event, Forward | Refused):
            groups.append(group)
            group = []
    if len(groups) != len(decoded.orders):
        # Refused whole (out of sequence: one refusal for the command): each order
        # is answered with it, and none is forwarded.
        refusals: list[AnyLedgerEvent] = [event for event in events
                                          if isinstance(event, Refused)]
        groups = [refusals] * len(decoded.orders)
    where = f"ledger command {command.sequence}, order"
    return [(index, gateway_inbox(funded.ack or None, f"{where} {index}", "ack", "ledger"),
             gateway_inbox(funded.reply or None, f"{where} {index}", "reply", "ledger"),
             traceparent(funded.trace or None, f"{where} {index}", "ledger"), own)
            for index, (funded, own) in enumerate(zip(decoded.orders, groups, strict=True))]


class LedgerPath(Replica):
    """Applies ledger commands; while leading, publishes and acts on what they did."""

    component = "ledger"

    def __init__(self, nc: Client, shard: int, replica: str, ledger: Ledger,
                 events: EventsPublisher, forwarder: StreamWriter, *, leading: bool) -> None:
        super().__init__(nc, ledger_name(shard), replica, events,
                         event_stream=ledger_event_stream(shard),
                         event_subject=ledger_event_subject(shard), leading=leading)
        self.shard = shard
        self.ledger = ledger
        self.forwarder = forwarder

    async def _process(self, batch: list[SequencedCommand]) -> None:
        outgoing: Outgoing = []
        for command in batch:
            applied = self.apply(command)
            if command.sequence <= self.published_through:
                self.replayed_command(command, applied)
                continue
            outgoing.append((command, encode_ledger_events(LedgerBatch(
                self.shard, command.sequence, command.timestamp, applied[1])), applied))
        if not outgoing:
            return
        if not self.leading:
            self.pending.extend(outgoing)
            return
        await self.publish(outgoing)

    def messages(self, outgoing: Outgoing) -> list[tuple[int, bytes]]:
        return event_messages(outgoing)

    def apply(self, command: SequencedCommand) -> Applied:
        decoded = ledger_command(self.name, command)
        return (decoded, self.ledger.apply(decoded)) if decoded is not None else (None, [])

    async def after_publish(self, outgoing: Outgoing) -> None:
        forwards: list[tuple[SequencedCommand, int, str | None, bool, Outbound]] = []
        moved: set[str] = set()
        answers = Answers(self.nc.publish, GROUPED_ACKS)
        for command, payload, (decoded, events) in outgoing:
            for event in events:
                if isinstance(event, Movement | Fill) and event.account not in SYSTEM_ACCOUNTS:
                    moved.add(event.account)
            funded = fundings(command, decoded, events)
            together = Together(self.shard, command.sequence, decoded)
            for index, _, reply, trace, own in funded:
                together.add(index, own, reply, trace)
            for index, ack_to, reply, trace, own in funded:
                for event in own:
                    if isinstance(event, Forward):
                        held = not any(isinstance(other, Duplicate) for other in own)
                        outbound = together.message(index) or self.forward(
                            command.sequence, event, reply, trace, index)
                        forwards.append((command, index, ack_to, held, outbound))
                    elif isinstance(event, Refused) and ack_to:
                        await answers.add(ack_to, msgspec.json.encode(LedgerRefusal(
                            int(event.code), event.code.name, event.reason, self.shard,
                            command.sequence, event.reference)), refused=True)
            if command.reply and not funded:
                await self.nc.publish(command.reply, payload)
        if forwards:
            acks = await self.write_forwards([item[4] for item in forwards])
            unsent: list[Outbound] = []
            kept: dict[int, bool | None] = {}  # by message: orders sent together share it
            for (command, index, ack_to, held, outbound), ack in zip(forwards, acks,
                                                                     strict=True):
                if held and id(outbound) not in kept:
                    kept[id(outbound)] = await self._kept_as_sent(outbound, ack)
                if held and kept[id(outbound)] is False:
                    unsent.append(self._unsent(command, index, outbound))
                elif held and kept[id(outbound)]:
                    # A copy of this very forward, sent before (its acknowledgement was
                    # late): to the gateway it is the order's acknowledgement, not a
                    # trader's retry.
                    answer = decode_pub_ack(ack)
                    ack = msgspec.json.encode(PubAck(answer.stream, answer.seq))
                if ack_to:
                    await answers.add(ack_to, ack)
            if unsent:
                await self.forwarder.write(unsent)
        await answers.send()
        for account in sorted(moved):
            await self.nc.publish(balances_subject(account), msgspec.json.encode(
                account_balances(self.ledger, account)))

    async def write_forwards(self, outbound: list[Outbound]) -> list[bytes]:
        """Write forwards, each message once however many orders share it; each one's
        acknowledgement, in order."""
        unique = list({id(message): message for message in outbound}.values())
        acks = dict(zip((id(message) for message in unique),
                        await self.forwarder.write(unique), strict=True))
        return [acks[id(message)] for message in outbound]

    def forward(self, sequence: int, event: Forward, reply: str | None = None,
                trace: str | None = None, index: int = 0) -> Outbound:
        """The funded command ``sequence`` (order ``index`` of it, for a ``fundOrders``)
        for its market's command stream. An order goes under the message id the gateway
        would give it, so a retry is stored once; a replace under its ledger sequence, so
        a new leader's second forward is."""
        command = event.command
        message_id = (order_message_id(command.account, command.client_order_id)
                      if isinstance(command, Place) else forward_message_id(self.shard,
                                                                            sequence))
        headers = {HEADER_MESSAGE_ID: message_id,
                   HEADER_FUNDED: funded_id(self.shard, sequence, index)}
        if reply:
            headers[HEADER_REPLY] = reply
        if trace:
            headers[TRACEPARENT] = trace
        return Outbound(command_subject(event.market), encode_command(command), headers,
                        command_stream(event.market))

    async def _kept_as_sent(self, outbound: Outbound, ack: bytes) -> bool | None:
        """For a funded order the market's stream answered ``duplicate``: whether the
        message it keeps is this funding's (a copy sent before, by this leader or the
        last), or another's under the same id (False: the order was dropped). None when
        the answer is no duplicate, names another stream than the one written to, or the
        stored message cannot be read."""
        try:
            answer = decode_pub_ack(ack)
        except msgspec.DecodeError:
            return None
        if not answer.duplicate or answer.stream != outbound.stream:
            return None
        try:
            stored = await self.js.get_msg(outbound.stream, answer.seq)
        except NATS_ERRORS as exc:
            log.warning("%s: cannot read %s message %d (%s); the hold stays", self.name,
                        outbound.stream, answer.seq, type(exc).__name__)
            return None
        return (stored.headers or {}).get(HEADER_FUNDED) == outbound.headers[HEADER_FUNDED]

    def _unsent(self, command: SequencedCommand, index: int, outbound: Outbound) -> Outbound:
        decoded = decode_ledger_command(command.data, command.sequence, command.timestamp)
        market, place = funded_order(decoded, index)
        named_place = named(place, self.shard, command.sequence, index)
        log.info("%s: order %s of %s was dropped by %s as a duplicate; its hold goes back",
                 self.name, named_place.client_order_id, named_place.account,
                 outbound.subject)
        unsent = Unsent(0, 0, market=market, account=named_place.account,
                        client_order_id=named_place.client_order_id,
                        funded_at=command.sequence, funded_index=index)
        return self.own(unsent, f"unsent:{funded_id(self.shard, command.sequence, index)}")

    def own(self, command: AnyLedgerCommand, message_id: str) -> Outbound:
        """A command the leader sequences in its own shard's stream, as the ledger."""
        return Outbound(ledger_command_subject(self.shard, LedgerSource.LEDGER),
                        encode_ledger_command(command), {HEADER_MESSAGE_ID: message_id},
                        ledger_command_stream(self.shard))

    def confirmed(self, command: SequencedCommand, events: Any) -> None:
        """Nothing to remember: the ledger's state is all there is."""


def funded_order(command: AnyLedgerCommand, index: int) -> tuple[str, Place]:
    """(market, order) of the funding ``index`` of a ``fundOrder`` (0) or ``fundOrders``."""
    if isinstance(command, FundOrders):
        funded = command.orders[index]
        return funded.market, funded.place
    assert isinstance(command, FundOrder), "only orders are forwarded as orders"
    assert index == 0, "a fundOrder funds one order"
    return command.market, command.place
