"""What applying one ledger command did.

``Movement`` is one line of the double-entry journal: a change of one account's
available and held amounts of one asset. ``Fill`` is the three or four lines of one
side of a trade in one event (``Fill.legs``). The journal lines of one command sum to
zero for every asset, counting the system accounts (``$world`` for deposits and
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


class Fill(LedgerEvent, frozen=True, gc=False, tag="fill"):
    """One side of a trade, for an account of the shard: its journal lines (``legs``)
    in one event. A fill is the ledger's commonest change, and making one event costs
    about a third of making its three or four movements (docs/performance.md)."""

    account: str
    market: str
    order_id: int
    base: str
    quote: str
    buy: bool
    value: int
    """The trade's value in quote units."""
    delivered: int
    """The base units that changed hands."""
    fee: int
    """The fee in quote units, to ``$fees``."""
    released: int = 0
    """What a buy's hold gives back to available (it paid less than its limit); 0 for a
    sell."""

    def legs(self) -> list[Movement]:
        """The journal lines, in order: a buy's value and fee out of held quote, the base
        into available and what goes back to available; a sell's base out of held, and
        the value less the fee into available. A zero line is left out."""
        account, market, order_id = self.account, self.market, self.order_id
        value, delivered, fee, released = self.value, self.delivered, self.fee, self.released
        lines: list[Movement] = []
        if self.buy:
            if value:
                lines.append(Movement(MovementKind.TRADE, account, self.quote, 0, -value,
                                      market, order_id))
            if fee:
                lines.append(Movement(MovementKind.FEE, account, self.quote, 0, -fee, market,
                                      order_id))
            if delivered:
                lines.append(Movement(MovementKind.TRADE, account, self.base, delivered, 0,
                                      market, order_id))
            if released:
                lines.append(Movement(MovementKind.RELEASE, account, self.quote, released,
                                      -released, market, order_id))
        else:
            if delivered:
                lines.append(Movement(MovementKind.TRADE, account, self.base, 0, -delivered,
                                      market, order_id))
            if value:
                lines.append(Movement(MovementKind.TRADE, account, self.quote, value, 0,
                                      market, order_id))
            if fee:
                lines.append(Movement(MovementKind.FEE, account, self.quote, -fee, 0, market,
                                      order_id))
        return lines


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


AnyLedgerEvent = Movement | Fill | Forward | Refused | Duplicate


def journal_lines(events: list[AnyLedgerEvent]) -> list[AnyLedgerEvent]:
    """A command's events with each ``Fill`` in its legs: every other event keeps its
    place, so a line's index among them is the one the journal keys it by."""
    lines: list[AnyLedgerEvent] = []
    for event in events:
        if type(event) is Fill:
            lines.extend(event.legs())
        else:
            lines.append(event)
    return lines
