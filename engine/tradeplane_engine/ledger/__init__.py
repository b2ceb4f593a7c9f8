"""The ledger's pure core: balances, holds and settlement as a deterministic state machine.

Like the matching core, nothing here reads a clock, does I/O or uses binary floating
point; the design, and why holds always cover fills, is in docs/ledger.md.
"""

from tradeplane_engine.ledger.amounts import (
    CLEARING,
    FEES,
    SYSTEM_ACCOUNTS,
    WORLD,
    Terms,
    TermsError,
    fee,
    shard_of,
)
from tradeplane_engine.ledger.commands import (
    AnyLedgerCommand,
    DefineAsset,
    DefineMarket,
    Deposit,
    Funded,
    FundOrder,
    FundOrders,
    FundReplace,
    LedgerCommand,
    Report,
    Settle,
    Unsent,
    Withdraw,
)
from tradeplane_engine.ledger.events import (
    AnyLedgerEvent,
    Duplicate,
    Fill,
    Forward,
    LedgerEvent,
    Movement,
    MovementKind,
    Refused,
    journal_lines,
)
from tradeplane_engine.ledger.state import Funding, Ledger, named

__all__ = [
    "CLEARING", "FEES", "SYSTEM_ACCOUNTS", "WORLD", "AnyLedgerCommand", "AnyLedgerEvent",
    "DefineAsset", "DefineMarket", "Deposit", "Duplicate", "Fill", "Forward", "FundOrder",
    "FundOrders", "FundReplace", "Funded", "Funding", "Ledger", "LedgerCommand",
    "LedgerEvent", "Movement", "MovementKind", "Refused", "Report", "Settle", "Terms",
    "TermsError", "Unsent", "Withdraw", "fee", "journal_lines", "named", "shard_of",
]
