"""What applying one ledger command did.

``Movement`` is one line of the double-entry journal: a change of one account's
available and held amounts of one asset. The movements of one command sum to zero
for every asset, counting the system accounts (``$world`` for deposits and
withdrawals, ``$clearing`` for trades, ``$fees``), so nothing is created or destroyed.
``Forward`` asks the leader to send a funded command to its market; ``Refused`` says
why a command changed nothing.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.core.commands import Place, Replace


class MovementKind(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    HOLD = "hold"
    """Available to held, for an order or a replace."""
    RELEASE = "release"
    """Held to available: what an order no longer needs."""
    TRADE = "trade"
    """A trade leg: held to clearing (what is delivered), clearing to available (what is
    received)."""
    FEE = "fee"


class LedgerEvent(msgspec.Struct, frozen=True, gc=False, tag_field="type"):
    pass


class Movement(LedgerEvent, frozen=True, gc=False, tag="movement"):
    kind: MovementKind
    account: str
    asset: str
    available: int
    """Change of the available amount (negative: it went down)."""
    held: int
    """Change of the held amount."""
    market: str = ""
    order_id: int = 0
    """The order it is for (0: not known yet, or none); ``client_order_id`` before."""
    reference: str = ""
    """The transfer id of a deposit or withdrawal, the client order id of a hold."""


class Forward(LedgerEvent, frozen=True, gc=False, tag="forward"):
    """A funded order or replace for ``market``'s command stream."""

    market: str
    command: Place | Replace


class Refused(LedgerEvent, frozen=True, gc=False, tag="refused"):
    """The command changed nothing."""

    code: RejectCode
    reason: str
    command: str
    account: str = ""
    reference: str = ""
    """Transfer id or client order id."""


class Duplicate(LedgerEvent, frozen=True, gc=False, tag="duplicate"):
    """The command was applied before (the same transfer, an events message settled
    already): nothing changes, and its first outcome stands."""

    command: str
    reference: str


AnyLedgerEvent = Movement | Forward | Refused | Duplicate
