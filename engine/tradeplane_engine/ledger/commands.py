"""The ledger's commands, in the order its stream sequenced them.

A ledger shard's command stream carries everything that changes balances: an
administrator's asset and market terms, deposits and withdrawals (idempotent by
transfer id), a trader's order or replace to fund before it goes to its market, and
the settlement of a market's events message (keyed by the market and the message's
command sequence, so a second delivery changes nothing). As the engine's commands,
each carries the sequence and time its stream gave it.
"""

from __future__ import annotations

import msgspec

from tradeplane_engine.core.commands import Place, Replace
from tradeplane_engine.core.events import AnyEvent


class LedgerCommand(msgspec.Struct, frozen=True, gc=False, tag_field="type"):
    sequence: int
    timestamp: int


class DefineAsset(LedgerCommand, frozen=True, gc=False, tag="defineAsset"):
    """An asset and its decimals; the decimals never change once defined."""

    asset: str
    decimals: int


class DefineMarket(LedgerCommand, frozen=True, gc=False, tag="defineMarket"):
    """A market's grid and fees, as its definition says (fees may change later)."""

    market: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    maker_bps: int = 0
    taker_bps: int = 0


class Deposit(LedgerCommand, frozen=True, gc=False, tag="deposit"):
    """Credit an account; ``transfer_id`` makes a retry harmless."""

    transfer_id: str
    account: str
    asset: str
    amount: int


class Withdraw(LedgerCommand, frozen=True, gc=False, tag="withdraw"):
    """Debit an account's available balance; ``transfer_id`` makes a retry harmless."""

    transfer_id: str
    account: str
    asset: str
    amount: int


class FundOrder(LedgerCommand, frozen=True, gc=False, tag="fundOrder"):
    """Hold what ``place`` may spend, then send it to ``market`` (its sequence and
    timestamp are the market stream's, not these)."""

    market: str
    place: Place


class Funded(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One order of a ``fundOrders``, with where its answers go (headers, for a
    ``fundOrder`` alone): the ledger passes them on as it forwards the order."""

    market: str
    place: Place
    ack: str = ""
    """Where the market stream's acknowledgement of the order goes (``Tp-Ack``)."""
    reply: str = ""
    """Where its market sends the order's events (``Tp-Reply``)."""
    trace: str = ""
    """Its W3C ``traceparent``."""
    named_by_gateway: bool = False
    """Its gateway named it (the trader did not): no retry can carry its name, so the
    ledger forwards it with the other such orders of the ``fundOrders`` for its market,
    in one message (docs/ledger.md). False: a message of its own, under the message id
    ``<account>:<clientOrderId>``, as a retry's must be."""


class FundOrders(LedgerCommand, frozen=True, gc=False, tag="fundOrders"):
    """Several ``fundOrder``s in one message, as a gateway batches them: each order held
    and forwarded, or refused, in turn, as if it came alone. Order ``i`` of it is known
    by (this command's sequence, ``i``)."""

    orders: list[Funded]


class FundReplace(LedgerCommand, frozen=True, gc=False, tag="fundReplace"):
    """Hold what a replace may add to its order's needs, then send it to ``market``."""

    market: str
    replace: Replace


class Unsent(LedgerCommand, frozen=True, gc=False, tag="unsent"):
    """A funded order its market's stream dropped as a duplicate of an earlier message
    (its client order id reused within the stream's duplicate window): it will never
    be matched, so its hold goes back. ``funded_at`` and ``funded_index`` name the
    funding (the ``fundOrder``, or order ``funded_index`` of a ``fundOrders``)."""

    market: str
    account: str
    client_order_id: str
    funded_at: int
    funded_index: int = 0


class Report(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One events message of a market, as a ``settle`` carries it."""

    events_sequence: int
    """The market command it reports on: what settlement is keyed by."""
    position: int
    """The message's sequence in the market's events stream."""
    events: list[AnyEvent]
    """Its order events (book levels and mode changes left out)."""


class Settle(LedgerCommand, frozen=True, gc=False, tag="settle"):
    """Consecutive events messages of a market: settle their trades, release what their
    orders no longer need. Each report is settled once: one whose ``events_sequence`` is
    not above the last settled of the market changes nothing (``Duplicate``), however the
    reports were grouped into ``settle`` commands."""

    market: str
    reports: list[Report]


AnyLedgerCommand = (DefineAsset | DefineMarket | Deposit | Withdraw | FundOrder | FundOrders
                    | FundReplace | Unsent | Settle)
