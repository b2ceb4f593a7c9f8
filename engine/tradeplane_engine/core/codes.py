"""Stable numeric codes: why a command was rejected, why an order was canceled.

Codes are part of the public protocol (events, replies, the database), so a code is
never renumbered or reused. Reject codes are numbered by the stage that finds them,
as exchange-core does, so the hundreds tell where a command stopped:

- 1xx  market state: the market's trading mode does not accept the command
- 2xx  order validation: the order itself is malformed or breaks a market rule
- 3xx  order reference: the command names an order that cannot be acted on
- 4xx  sequencing: the command arrived out of the sequencer's order
- 5xx  funds: the ledger (docs/ledger.md) refused to fund an order or move a balance
- 9xx  reserved for the edge (gateway): malformed payloads, unknown markets, limits
"""

from __future__ import annotations

from enum import IntEnum


class RejectCode(IntEnum):
    """Why the engine refused a command. Nothing changes in the book on a reject."""

    MARKET_HALTED = 101
    """The market is ``halted``: no trader command is accepted."""
    MARKET_CANCEL_ONLY = 102
    """The market is ``cancelOnly``: only cancels are accepted."""
    MARKET_POST_ONLY = 103
    """The market is ``postOnly``: only limit GTC orders may be placed."""

    INVALID_QUANTITY = 201
    """Quantity (or quote amount) is not positive, or above the market's maximum."""
    INVALID_PRICE = 202
    """Price is not positive, above the maximum, or given where none is allowed."""
    PRICE_NOT_ON_TICK = 203
    """The decimal price is not a whole multiple of the tick size (edge conversion)."""
    QUANTITY_NOT_ON_LOT = 204
    """The decimal quantity is not a whole multiple of the lot size (edge conversion)."""
    BELOW_MIN_NOTIONAL = 205
    """price × quantity (or the quote amount) is below the market's minimum notional."""
    OUTSIDE_PRICE_BAND = 206
    """The limit price is further from the reference price than the band allows."""
    DUPLICATE_CLIENT_ORDER_ID = 207
    """The account already has an open order with this client order id."""
    INVALID_ORDER_PARAMS = 208
    """The combination of order type, time in force and flags is not allowed."""
    REPLACE_QUANTITY_TOO_LOW = 209
    """A replace asks for a total quantity not above what is already filled."""

    UNKNOWN_ORDER = 301
    """No open order of this account has that order id or client order id."""

    SEQUENCE_OUT_OF_ORDER = 401
    """The command's sequence is not above the last applied one (a replayed duplicate)."""
    INSUFFICIENT_FUNDS = 501
    """The account's available balance does not cover what the order (or replace, or
    withdrawal) needs."""
    QUOTE_AMOUNT_REQUIRED = 502
    """A market buy must say how much quote it spends (``quoteAmount``): with balances,
    a market buy by quantity has no price to hold for."""
    NOT_FUNDED = 503
    """The ledger does not know the market or the asset (not defined to it yet)."""
    TRANSFER_ID_REUSED = 504
    """A deposit or withdrawal id already names a different transfer."""
    INVALID_AMOUNT = 505
    """An amount, asset or decimals value out of range, or a definition that would change
    what may not change."""


class CancelReason(IntEnum):
    """Why an order left the book (or never rested) without being filled completely."""

    USER = 1
    """The owner canceled it, or canceled all its orders."""
    IOC_REMAINDER = 2
    """The unfilled part of an immediate-or-cancel order."""
    FOK_UNFILLED = 3
    """A fill-or-kill order that could not be filled completely at once."""
    STP = 4
    """Self-trade prevention expired or decremented it away."""
    POST_ONLY_WOULD_CROSS = 5
    """A post-only order that would have taken liquidity."""
    MODE = 6
    """The market's ``postOnly`` mode turned away an order that would cross."""
    MARKET_REMAINDER = 7
    """The unfilled part of a market order: the book had no more liquidity within reach."""
    ADMIN = 8
    """An operator's market-wide cancel-all (for example before deleting a market)."""
