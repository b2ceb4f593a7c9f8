"""The data plane's names and messages: subjects, streams, headers, and their encodings.

This is the contract between the gateway, the engine service and everything that reads
the streams (the recorder, standbys, tools). The gateway imports it with the core's
command and event schema and nothing else of the engine. The public side of it — the
subjects and JSON a trader sees — is written down in docs/protocol.md.

Internally (command and events streams) prices and quantities travel as the core's
integers; everything published for traders carries decimal strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec

from tradeplane_engine.core.codes import CancelReason, RejectCode
from tradeplane_engine.core.commands import (
    AnyCommand,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from tradeplane_engine.core.events import (
    AnyEvent,
    BookLevel,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderStatus,
    OrderUpdate,
    Trade,
)
from tradeplane_engine.core.market import MarketSpec, UnitFormatter, format_decimal
from tradeplane_engine.ledger.commands import (
    AnyLedgerCommand,
    DefineAsset,
    DefineMarket,
    Deposit,
    FundOrder,
    FundOrders,
    FundReplace,
    Settle,
    Unsent,
    Withdraw,
)
from tradeplane_engine.ledger.events import AnyLedgerEvent

MARKETS_BUCKET = "tp-markets"
"""NATS key-value bucket of market definitions: key = market name, value = JSON spec."""
LEASES_BUCKET = "tp-leases"
"""Each market's leader lease, key ``<market>`` (docs/failover.md)."""
REPLICAS_BUCKET = "tp-replicas"
"""Each replica's status, key ``<market>.<replica>``, renewed every second; an entry
not renewed for 10 s expires (a replica that is gone)."""
GATEWAY_QUEUE = "tp-gateway"
"""Queue group of every gateway process: a request goes to exactly one of them."""
HISTORY_QUEUE = "tp-history"
"""Queue group of a market's history queries: one recorder process answers each."""
SNAPSHOT_QUEUE = "tp-snapshotter"
"""Queue group of snapshot requests: with more than one recorder process for a market,
one request still makes one snapshot."""
ANY = "*"
"""Any one market or account, in a subject pattern (``command_subject(ANY)``)."""
API_SUBJECTS = "tp.api.*.>"
"""What gateways serve: every subject under ``tp.api.<account>.``. The requests are
``tp.api.<account>.order.<verb>``; anything else there is answered as an unknown request,
so that whatever a trader may send gets a reply."""
ENGINE_SUBJECTS = "tp.engine.>"
"""Every market engine's internal requests (``engine_subject``)."""
RECORDER_SUBJECTS = "tp.recorder.>"
"""Every market recorder's internal requests (``recorder_subject``)."""
BOOK_SNAPSHOTS = "tp.md.*.book.snapshot"
"""Book snapshot requests: the leader of a market's engine answers its own market's, the
gateways (in their queue group) those of a market they do not know."""

HEADER_MESSAGE_ID = "Nats-Msg-Id"
HEADER_REPLY = "Tp-Reply"
"""On a command: where the engine sends the command's events once applied (core NATS)."""
HEADER_SEQUENCE = "Tp-Sequence"
"""On an events message: the command sequence the events belong to."""
HEADER_EPOCH = "Tp-Epoch"
"""On an events message: the lease epoch of the leader that published it."""
HEADER_ORDER = "Tp-Order"
"""On a command's result (the reply to ``Tp-Reply``, never the events stream): the
order a cancel finished, or a cancel or replace named and found no longer open, as the
engine's ``order`` query answers it (JSON) — what the events do not say of it."""

GROUPED = "g"
"""A ``Tp-Reply`` subject ``<inbox>.g.<token>`` says its sender takes results together:
the engine answers all such commands of one batch with one message on ``<inbox>.g``, a
JSON array of ``Grouped`` (``grouped``)."""
GROUPED_ACKS = "k"
"""The same for a ``Tp-Ack`` subject ``<inbox>.k.<token>``: a ledger shard relays the
acknowledgements (and refusals) of one batch's orders in one message on ``<inbox>.k``."""


class Grouped(msgspec.Struct, frozen=True):
    """One command's answer in a grouped message."""

    token: str
    """The last token of the command's ``Tp-Reply`` (``Tp-Ack``) subject."""
    answer: msgspec.Raw
    """What the answer on its own would be: the command's ``EventBatch``, the market
    stream's acknowledgement, or the ledger's refusal."""
    order: msgspec.Raw = msgspec.Raw(b"null")
    """What ``Tp-Order`` would carry on a result on its own (JSON), or null."""
    refused: bool = False
    """What ``Tp-Refused`` would say on an acknowledgement on its own."""

    def named(self) -> bytes | None:
        """``order``, unless null."""
        named = bytes(self.order)
        return None if named == b"null" else named


decode_grouped = msgspec.json.Decoder(list[Grouped]).decode
_encode_token = msgspec.json.Encoder().encode


def grouped_subject(subject: str, kind: str = GROUPED) -> tuple[str, str] | None:
    """(``<inbox>.<kind>``, token) of an answer subject ``<inbox>.<kind>.<token>``, whose
    sender takes answers of that kind grouped; None for any other."""
    parent, _, token = subject.rpartition(".")
    return (parent, token) if token and parent.endswith(f".{kind}") else None


def grouped(token: str, answer: bytes, order: str | None = None,
            refused: bool = False) -> bytes:
    """One item of a grouped message, in JSON (``Grouped``)."""
    return b"".join((b'{"token":', _encode_token(token), b',"answer":', answer,
                     b',"order":', order.encode() if order else b"null",
                     b',"refused":true}' if refused else b"}"))


HEADER_COMMANDS = "Tp-Commands"
"""On a command-stream message: it holds several commands (``encode_commands``), how
many. They share the message's sequence, each with its index among them."""
MAX_COMMANDS = 1024
"""The most commands one command-stream message may hold."""


HEADER_ACK = "Tp-Ack"
"""On a command the gateway sends to a ledger shard: where the gateway wants the market
stream's acknowledgement of the order once the ledger forwards it, or the ledger's
refusal (``HEADER_REFUSED``) if it does not (docs/ledger.md)."""
HEADER_REFUSED = "Tp-Refused"
"""On the ledger's answer to ``Tp-Ack``: the order was not funded; the body is the
``LedgerRefusal``."""

HEADER_FUNDED = "Tp-Funded"
"""On an order a ledger shard forwarded: ``<shard>:<ledger sequence>`` of its funding, so
the shard can tell its own message from an earlier one under the same message id."""


def order_message_id(account: str, client_order_id: str) -> str:
    """A new order's ``Nats-Msg-Id`` in its market's command stream: a retry within the
    stream's duplicate window is stored once."""
    return f"{account}:{client_order_id}"


MAX_REQUEST = 4096
"""Bytes: the largest body an internal request (a switchover, a snapshot) is read from;
theirs are a few dozen, and a larger one is answered as malformed without decoding it."""

_SEQUENCE = re.compile(r"^[0-9]{1,18}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ACCOUNT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
MAX_SUBJECT = 256


def header_sequence(headers: dict[str, str] | None) -> int | None:
    """An events message's ``Tp-Sequence``: None unless it is a plain decimal number (of
    at most 18 digits) — what the engine writes; anyone else's header is not trusted."""
    value = (headers or {}).get(HEADER_SEQUENCE)
    return int(value) if value is not None and _SEQUENCE.match(value) else None


def is_traceparent(value: str) -> bool:
    """A W3C ``traceparent`` (55 characters): a command's is passed on to its batch of
    events, so anything else there is dropped rather than copied."""
    return bool(_TRACEPARENT.match(value))


def is_market_name(name: str) -> bool:
    """Market names are Kubernetes names (DNS labels): they appear in subjects and streams."""
    return bool(_NAME.match(name))


def is_account(account: str) -> bool:
    """Accounts are one subject token, so NATS permissions can confine a trader to theirs."""
    return bool(_ACCOUNT.match(account))


def is_subject(subject: str) -> bool:
    """A subject a message can be published to: dot-separated tokens, none empty, no
    whitespace, no wildcards, at most ``MAX_SUBJECT`` characters (a reply subject that
    came with a command is checked before anything is sent to it)."""
    return len(subject) <= MAX_SUBJECT and bool(_SUBJECT.match(subject))


def command_stream(market: str) -> str:
    return f"tp-cmd-{market}"


def command_subject(market: str) -> str:
    return f"tp.cmd.{market}"


def event_stream(market: str) -> str:
    return f"tp-evt-{market}"


def event_subject(market: str) -> str:
    return f"tp.evt.{market}"


def book_subject(market: str) -> str:
    """Public L2 deltas, each with a contiguous per-market ``seq``."""
    return f"tp.md.{market}.book"


def book_snapshot_subject(market: str) -> str:
    """Request/reply: the whole L2 book and the ``seq`` of the last delta it includes."""
    return f"tp.md.{market}.book.snapshot"


def trades_subject(market: str) -> str:
    """Public trades; trade ids are contiguous per market, so they show a gap."""
    return f"tp.md.{market}.trades"


def account_subject(account: str) -> str:
    """Private order updates of one account (all markets)."""
    return f"tp.acct.{account}.orders"


def engine_subject(market: str, what: str) -> str:
    """Internal request/reply served by a market's engine: ``status``, ``order``."""
    return f"tp.engine.{market}.{what}"


def recorder_subject(market: str, what: str) -> str:
    """Internal request/reply served by a market's recorder process: ``status`` (the
    recorder's lag), ``snapshot`` (a snapshot through a given command, on demand)."""
    return f"tp.recorder.{market}.{what}"


def history_subject(market: str, what: str) -> str:
    """Trader queries a market's recorder answers from PostgreSQL: ``order``, ``trades``
    (the gateway asks them on a trader's behalf)."""
    return f"tp.history.{market}.{what}"


def api_subject(account: str, verb: str) -> str:
    return f"tp.api.{account}.order.{verb}"


def balances_request_subject(account: str) -> str:
    """Where a trader asks for its balances (the one request not about a market)."""
    return f"tp.api.{account}.account.balances"


def api_subjects(account: str) -> str:
    """Everything under an account's requests (``api_subjects(ANY)``: ``API_SUBJECTS``)."""
    return f"tp.api.{account}.>"


def account_updates(account: str) -> str:
    """Everything published for one account (its orders: ``account_subject``)."""
    return f"tp.acct.{account}.>"


def balances_subject(account: str) -> str:
    """An account's balances, published by its ledger shard after each change."""
    return f"tp.acct.{account}.balances"


def ledger_name(shard: int | str) -> str:
    """A ledger shard's name: its lease key and its events' message id prefix (no
    market's name has a dot)."""
    return f"ledger.{shard}"


def ledger_command_stream(shard: int | str) -> str:
    return f"tp-ledger-cmd-{shard}"


class LedgerSource(StrEnum):
    """Who may write a ledger command: the last token of its subject in the shard's
    stream. NATS lets each identity publish under its own only, and the ledger applies
    a command only from the source that may send it (``LEDGER_SOURCES``)."""

    ORDER = "order"
    """A gateway: orders and replaces to fund."""
    ADMIN = "admin"
    """An administrator: assets, deposits, withdrawals."""
    LEDGER = "ledger"
    """The shard's leader: settlements, market terms, unsent orders."""


LEDGER_SOURCES: dict[LedgerSource, tuple[type, ...]] = {
    LedgerSource.ORDER: (FundOrder, FundOrders, FundReplace),
    LedgerSource.ADMIN: (DefineAsset, Deposit, Withdraw),
    LedgerSource.LEDGER: (Settle, DefineMarket, Unsent),
}


def ledger_command_subject(shard: int | str, source: LedgerSource | str) -> str:
    """Where ``source`` writes to a shard's command stream (``*``: every source)."""
    return f"tp.ledger.{shard}.cmd.{source}"


def ledger_source(subject: str) -> LedgerSource | None:
    """The source a ledger command's subject names; None for another subject."""
    try:
        return LedgerSource(subject.rpartition(".")[2])
    except ValueError:
        return None


def ledger_event_stream(shard: int | str) -> str:
    return f"tp-ledger-evt-{shard}"


def ledger_event_subject(shard: int | str) -> str:
    return f"tp.ledger.{shard}.evt"


def ledger_subject(shard: int | str, what: str) -> str:
    """A shard leader's requests: ``balances``, ``status``."""
    return f"tp.ledger.{shard}.{what}"


def bucket_stream(bucket: str) -> str:
    """The JetStream stream behind a key-value bucket (NATS names it ``KV_<bucket>``)."""
    return f"KV_{bucket}"


def bucket_key_prefix(bucket: str) -> str:
    """What the subject of each key of a key-value bucket starts with: the key follows."""
    return f"$KV.{bucket}."


def bucket_subjects(bucket: str) -> str:
    """Every key of a key-value bucket, as NATS subjects (``$KV.<bucket>.>``)."""
    return f"{bucket_key_prefix(bucket)}>"


class MarketDefinition(MarketSpec, frozen=True, kw_only=True, rename="camel"):
    """A Market's spec as it sits in the markets bucket (the custom resource's spec + name).

    The matching rules are the ``MarketSpec`` fields it inherits; the fields for running
    the market (replicas, fees, snapshotEvery, engine) ride along so that one document
    describes a market everywhere. ``spec()`` is the part the engine takes.
    """

    name: str
    replicas: int = 2
    snapshot_every: int = 100_000
    fees: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not is_market_name(self.name):
            raise ValueError(f"market name {self.name!r} must be a DNS label (a-z, 0-9, -)")
        super().__post_init__()

    def spec(self) -> MarketSpec:
        return MarketSpec(**{field: getattr(self, field) for field in MarketSpec.__struct_fields__})


def definition_from_manifest(manifest: dict[str, Any]) -> MarketDefinition:
    """A ``kind: Market`` document (as parsed from YAML) to its definition."""
    if manifest.get("kind") != "Market":
        raise ValueError(f"not a Market manifest: kind {manifest.get('kind')!r}")
    name = (manifest.get("metadata") or {}).get("name")
    spec = dict(manifest.get("spec") or {})
    spec["name"] = name
    return msgspec.convert(spec, MarketDefinition)


encode_definition = msgspec.json.Encoder().encode
decode_definition = msgspec.json.Decoder(MarketDefinition).decode

MAX_DEFINITION = 64 * 1024
"""Bytes: a market definition is a few hundred; a value this large is no definition."""


def definition_entry(key: str, value: bytes) -> MarketDefinition:
    """The definition stored under ``key`` in the markets bucket.

    Raises ``ValueError`` (``msgspec.DecodeError`` is one) for a value that is larger
    than ``MAX_DEFINITION``, is not a definition, or defines a market other than
    ``key``: whoever wrote it, it is not what the operator or ``tradeplane up`` write,
    and every reader skips it and keeps the market's last good definition."""
    if len(value) > MAX_DEFINITION:
        raise ValueError(f"{len(value)} bytes, more than {MAX_DEFINITION}")
    definition = decode_definition(value)
    if definition.name != key:
        raise ValueError(f"the definition names market {definition.name!r}")
    return definition


# -- the command stream ------------------------------------------------------------------

_command_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(AnyCommand)


def encode_command(command: AnyCommand) -> bytes:
    """A command for the command stream; its sequence and timestamp are the stream's."""
    return _command_encoder.encode(command)


class CommandEntry(msgspec.Struct, frozen=True, array_like=True):
    """One command of a command-stream message of several (``HEADER_COMMANDS``), with
    what would otherwise be its message's headers: where to send its events
    (``Tp-Reply``) and its trace, "" for none."""

    command: msgspec.Raw
    reply: str = ""
    trace: str = ""


_entries_decoder = msgspec.json.Decoder(list[CommandEntry])


def encode_commands(entries: list[tuple[bytes, str, str]]) -> bytes:
    """Several encoded commands (each with its reply subject and traceparent, "" for
    none) as one command-stream message: a JSON array of ``[command, reply, trace]``."""
    return _command_encoder.encode([CommandEntry(msgspec.Raw(command), reply, trace)
                                    for command, reply, trace in entries])


def decode_commands(data: bytes) -> list[CommandEntry]:
    """The commands of a command-stream message of several; ``msgspec.DecodeError`` when
    it is not one (not an array of entries, none, or more than ``MAX_COMMANDS``)."""
    entries = _entries_decoder.decode(data)
    if not 0 < len(entries) <= MAX_COMMANDS:
        raise msgspec.DecodeError(f"a message of {len(entries)} commands "
                                  f"(1 to {MAX_COMMANDS})")
    return entries


def decode_command(data: bytes, sequence: int, timestamp: int,
                   index: int = 0) -> AnyCommand:
    """A command from the stream, stamped with the sequence and time the stream gave it
    (and its index among its message's commands).

    Raises ``msgspec.ValidationError`` for an account that is not one subject token (the
    gateway never sequences one; a client that bypassed it could, and the account names
    the subjects of the private updates)."""
    command: AnyCommand = _command_decoder.decode(data)
    account: str | None = getattr(command, "account", None)
    if account is not None and not is_account(account):
        raise msgspec.ValidationError(f"account {account[:80]!r} is not one subject token")
    stamped: AnyCommand = msgspec.structs.replace(command, sequence=sequence,
                                                  timestamp=timestamp, index=index)
    return stamped


# -- the ledger's streams ----------------------------------------------------------------

_ledger_decoder = msgspec.json.Decoder(AnyLedgerCommand)


def encode_ledger_command(command: AnyLedgerCommand) -> bytes:
    """A command for a ledger shard's stream; its sequence and timestamp are the stream's."""
    return _command_encoder.encode(command)


def decode_ledger_command(data: bytes, sequence: int, timestamp: int) -> AnyLedgerCommand:
    """A ledger command from its stream, stamped as the stream gave it; an order's
    account must be one subject token, as a market's commands'."""
    command: AnyLedgerCommand = _ledger_decoder.decode(data)
    if isinstance(command, FundOrder | FundReplace | FundOrders):
        inners = ([command.place] if isinstance(command, FundOrder) else
                  [command.replace] if isinstance(command, FundReplace) else
                  [funded.place for funded in command.orders])
        for inner in inners:
            if not is_account(inner.account):
                raise msgspec.ValidationError(f"account {inner.account[:80]!r} is not one "
                                              "subject token")
    stamped: AnyLedgerCommand = msgspec.structs.replace(command, sequence=sequence,
                                                        timestamp=timestamp)
    return stamped


class LedgerBatch(msgspec.Struct, frozen=True, gc=False):
    """What one ledger command did. A message of the shard's events stream is a JSON
    array of these, for consecutive commands (``Tp-Sequence``: the last one's)."""

    shard: int
    sequence: int
    timestamp: int
    events: list[AnyLedgerEvent]


encode_ledger_events = msgspec.json.Encoder().encode
_decode_ledger_message = msgspec.json.Decoder(list[LedgerBatch] | LedgerBatch).decode


def decode_ledger_events(data: bytes) -> list[LedgerBatch]:
    """The commands' batches of one events message of a ledger shard (a message of one
    command's batch alone, as the shard wrote before it grouped them, is one too)."""
    decoded = _decode_ledger_message(data)
    return decoded if isinstance(decoded, list) else [decoded]


GROUPED_BYTES = 512 * 1024
"""A message that groups several commands' batches or answers holds about this many
bytes at most (one alone may be larger): half of NATS's default payload limit."""


def join_batches(payloads: list[bytes]) -> bytes:
    """One events message of the encoded batches of consecutive commands: a JSON array."""
    return b"[" + b",".join(payloads) + b"]"


_decode_parts = msgspec.json.Decoder(list[msgspec.Raw]).decode


def batch_parts(data: bytes) -> list[bytes]:
    """Each command's encoded batch in one events message: the items of its array, or the
    whole message when it is one object (one command's, as written before grouping).
    ``msgspec.DecodeError`` when it is neither."""
    if data.lstrip()[:1] != b"[":
        return [data]
    return [bytes(part) for part in _decode_parts(data)]


class LedgerRefusal(msgspec.Struct, frozen=True, rename="camel"):
    """The ledger's answer to ``Tp-Ack`` when it did not fund an order or replace."""

    code: int
    name: str
    reason: str
    shard: int
    sequence: int
    """The ledger command's sequence in its shard's stream."""
    client_order_id: str = ""


# -- the events stream -------------------------------------------------------------------

class EventBatch(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """What one command did. A message of the market's events stream is a JSON array of
    these, for consecutive commands (``Tp-Sequence``: the last one's); a ``result``
    reply is one."""

    market: str
    sequence: int
    timestamp: int
    events: list[AnyEvent]
    trace: str | None = None
    """The order's W3C ``traceparent``, when it has one: the recorder continues it."""
    index: int = 0
    """The command's index among its command-stream message's (``Command.index``)."""


encode_events = msgspec.json.Encoder().encode
decode_events = msgspec.json.Decoder(EventBatch).decode


def decode_event_message(data: bytes) -> list[EventBatch]:
    """The commands' batches of one message of a market's events stream (a message of one
    command's batch alone, as engines wrote before they grouped them, is one too)."""
    return [decode_events(part) for part in batch_parts(data)]


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish: where the message went, or why it did not."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


decode_pub_ack = msgspec.json.Decoder(PubAck).decode

NO_RESPONDERS = "503"
"""The status NATS answers a publish with when nothing takes its subject: for a stream's
subject, when the stream has no leader (between leaders, or without a quorum)."""


MESSAGE_ID_IN_PROCESS = 10158
"""JetStream's error when a message under the same ``Nats-Msg-Id`` is still being stored
(proposed to the stream's replicas, not yet agreed): the stream takes or drops it."""


def stream_unavailable(data: bytes, headers: Mapping[str, str] | None) -> str | None:
    """Why a stream could not take a published message *for now*, or None: NATS's
    no-responders status, JetStream's error 503 (not available), or the same message id
    still in process (a first send that a stream which lost its quorum still holds). A
    writer sends such a message again rather than take the answer as its stream's; any
    other answer is the stream's own."""
    if not data:
        status = headers.get("Status") if headers else None
        return "no stream leader" if status == NO_RESPONDERS else None
    if b'"error"' not in data:
        return None
    try:
        error = decode_pub_ack(data).error or {}
    except msgspec.DecodeError:
        return None
    transient = (error.get("code") == int(NO_RESPONDERS)
                 or error.get("err_code") == MESSAGE_ID_IN_PROCESS)
    return str(error.get("description", "unavailable"))[:200] if transient else None


# -- what traders see --------------------------------------------------------------------

class OrderState(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True,
                 kw_only=True):
    """An order as every reply shows it, whole: the same fields in a place's, cancel's or
    replace's reply, a duplicate's, a status answer (from the engine or PostgreSQL), and
    open orders (docs/protocol.md, "The order")."""

    order_id: int
    """0 for a refused place (``rejected``): it never got an id."""
    client_order_id: str
    status: str
    """new, partiallyFilled, filled, canceled, or rejected."""
    side: str | None = None
    """Absent only for a refused place."""
    price: str | None = None
    """The limit price (its last replace's); absent for a market order."""
    quantity: str | None = None
    """The total quantity, filled included (its last replace's); absent for a market buy
    by quote amount (which has ``quote_amount``)."""
    quote_amount: str | None = None
    """A market buy by quote amount only."""
    filled_quantity: str
    remaining_quantity: str
    """Open in the book; "0" once finished."""
    reason: str | None = None
    """Why it was canceled (``user``, ``stp``...), or, refused, the engine's reason."""
    code: int | None = None
    """A refused place's reject code (with ``name``)."""
    name: str | None = None


class OrderRecord(OrderState, frozen=True, rename="camel", omit_defaults=True,
                  kw_only=True):
    """An order as the engine and the recorder answer about it (their ``order`` and
    ``openOrders`` queries, a result's ``Tp-Order``): the public order and how it was
    placed. ``type``, ``timeInForce``, ``postOnly`` and ``stp`` are for the gateway,
    which compares them with a retried place; they are not part of a reply's order (the
    gateway reads an ``OrderState`` from these answers). PostgreSQL keeps no ``stp``; a
    refused place has none of them."""

    type: str | None = None
    time_in_force: str | None = None
    post_only: bool | None = None
    stp: str | None = None


def refused_place(client_order_id: str, code: RejectCode, reason: str) -> OrderRecord:
    """A place the engine refused, as an order: it never got an id, and has no terms."""
    return OrderRecord(order_id=0, client_order_id=client_order_id, status="rejected",
                       filled_quantity="0", remaining_quantity="0", code=int(code),
                       name=code.name, reason=reason)


class Fill(msgspec.Struct, frozen=True, rename="camel"):
    """A trade of the order a reply is about, as the reply's ``fills`` show it."""

    trade_id: int
    price: str
    quantity: str
    role: str


class PublicFormatter:
    """Turns the core's integer events into the public JSON objects of docs/protocol.md."""

    def __init__(self, spec: MarketSpec) -> None:
        self.price = UnitFormatter(spec.tick_size)
        self.quantity = UnitFormatter(spec.lot_size)
        self.notional = UnitFormatter(_product(spec.tick_size, spec.lot_size))

    def order_event(self, event: AnyEvent, account: str) -> dict[str, Any] | None:
        """One event as the given account sees it; None if it is not about that account."""
        price, quantity = self.price, self.quantity
        if isinstance(event, Trade):
            if event.taker_account != account and event.maker_account != account:
                return None
            return _trade_update(event, event.taker_account == account,
                                 price(event.price), quantity(event.quantity))
        if isinstance(event, OrderUpdate):
            if event.account != account:
                return None
            update: dict[str, Any] = {
                "type": "orderUpdate", "orderId": event.order_id,
                "clientOrderId": event.client_order_id, "status": _VALUE[event.status],
                "filledQuantity": quantity(event.filled_quantity),
                "remainingQuantity": quantity(event.remaining_quantity),
            }
            if event.reason is not None:
                update["reason"] = _REASON[event.reason]
            return update
        if isinstance(event, OrderAccepted):
            if event.account != account:
                return None
            accepted: dict[str, Any] = {
                "type": "accepted", "orderId": event.order_id,
                "clientOrderId": event.client_order_id, "side": _VALUE[event.side],
                "orderType": _VALUE[event.order_type],
                "timeInForce": _VALUE[event.time_in_force], "postOnly": event.post_only,
                "stp": _VALUE[event.stp],
            }
            if event.price:
                accepted["price"] = price(event.price)
            if event.quantity:
                accepted["quantity"] = quantity(event.quantity)
            if event.quote_amount:
                accepted["quoteAmount"] = self.notional(event.quote_amount)
            return accepted
        if isinstance(event, OrderRejected):
            if event.account != account:
                return None
            return {"type": "rejected", "orderId": event.order_id,
                    "clientOrderId": event.client_order_id, "code": int(event.code),
                    "name": event.code.name, "reason": event.reason}
        if isinstance(event, OrderReplaced):
            if event.account != account:
                return None
            replaced: dict[str, Any] = {
                "type": "replaced", "orderId": event.order_id,
                "clientOrderId": event.client_order_id, "price": price(event.price),
                "quantity": quantity(event.quantity),
                "remainingQuantity": quantity(event.remaining_quantity),
                "priorityKept": event.priority_kept,
            }
            if event.side is not None:  # None in events stored before they were recorded
                replaced["side"] = _VALUE[event.side]
            if event.filled_quantity is not None:
                replaced["filledQuantity"] = quantity(event.filled_quantity)
            return replaced
        return None

    def order(self, order_id: int, client_order_id: str, status: str, *, side: str,
              price: int, quantity: int, quote_amount: int, filled: int, remaining: int,
              order_type: str, time_in_force: str, post_only: bool,
              stp: str | None = None, reason: str | None = None) -> OrderRecord:
        """An accepted order from the core's integers: no ``price`` for a market order
        (0), no ``quantity`` for a market buy by quote amount (0, ``quoteAmount``
        instead)."""
        return OrderRecord(
            order_id=order_id, client_order_id=client_order_id, status=status, side=side,
            price=self.price(price) if price else None,
            quantity=self.quantity(quantity) if quantity else None,
            quote_amount=self.notional(quote_amount) if quote_amount else None,
            filled_quantity=self.quantity(filled), remaining_quantity=self.quantity(remaining),
            reason=reason, type=order_type, time_in_force=time_in_force, post_only=post_only,
            stp=stp)

    def private_updates(self, events: list[AnyEvent], sequence: int, timestamp: int,
                        into: dict[str, list[dict[str, Any]]]) -> None:
        """One command's events as their accounts see them, each stamped with
        ``sequence`` and ``timestamp``, appended to the account's list in ``into``: what
        ``order_event`` gives each account the events concern (accounts first seen first,
        a trade's maker before its taker; each account's updates in event order), in one
        pass over the events."""
        for event in events:
            kind = type(event)
            if kind is Trade:
                assert isinstance(event, Trade)
                maker = into.setdefault(event.maker_account, [])
                taker = into.setdefault(event.taker_account, [])
                price = self.price(event.price)
                quantity = self.quantity(event.quantity)
                told = _trade_update(event, True, price, quantity)
                told["sequence"] = sequence
                told["timestamp"] = timestamp
                taker.append(told)
                if event.maker_account != event.taker_account:  # a self-trade: once
                    told = _trade_update(event, False, price, quantity)
                    told["sequence"] = sequence
                    told["timestamp"] = timestamp
                    maker.append(told)
            elif (kind is OrderUpdate or kind is OrderAccepted or kind is OrderRejected
                  or kind is OrderReplaced):
                assert isinstance(event, OrderUpdate | OrderAccepted | OrderRejected
                                  | OrderReplaced)
                update = self.order_event(event, event.account)
                assert update is not None
                update["sequence"] = sequence
                update["timestamp"] = timestamp
                into.setdefault(event.account, []).append(update)

    def trade(self, event: Trade) -> dict[str, Any]:
        return {"tradeId": event.trade_id, "price": self.price(event.price),
                "quantity": self.quantity(event.quantity), "side": _VALUE[event.aggressor_side]}

    def level(self, event: BookLevel) -> list[str]:
        return [self.price(event.price), self.quantity(event.quantity)]


def _trade_update(trade: Trade, taker: bool, price: str, quantity: str) -> dict[str, Any]:
    """A trade as its taker (or its maker) sees it, its price and quantity formatted."""
    if taker:
        return {"type": "trade", "tradeId": trade.trade_id, "orderId": trade.taker_order_id,
                "role": "taker", "side": _VALUE[trade.aggressor_side], "price": price,
                "quantity": quantity}
    return {"type": "trade", "tradeId": trade.trade_id, "orderId": trade.maker_order_id,
            "role": "maker", "side": _OTHER_SIDE[trade.aggressor_side], "price": price,
            "quantity": quantity}


_VALUE: dict[StrEnum, str] = {member: member.value for kind in (
    Side, OrderType, TimeInForce, SelfTradePrevention, OrderStatus) for member in kind}
"""Each member's value: a dictionary lookup, where ``.value`` is a Python-level property."""
_OTHER_SIDE = {Side.BUY: "sell", Side.SELL: "buy"}
_REASON = {reason: reason.name.lower() for reason in CancelReason}


def _product(a: str, b: str) -> str:
    return format_decimal(Decimal(a) * Decimal(b))
