"""Amounts the ledger keeps: whole units of each asset, and what an order must hold.

Every balance is an integer count of its asset's smallest unit (``10**-decimals`` of
it: a satoshi for BTC at 8 decimals). A market's prices are whole ticks and its
quantities whole lots (``core.market``); ``Terms`` turns them into asset units once,
when the market is defined to the ledger, and refuses a market whose grid its assets
cannot express exactly (a lot of 0.001 BTC needs at least 3 decimals of BTC).

Fees are charged in the quote asset, in basis points of a fill's value, rounded up to
a whole unit (the exchange never charges less than its rate). A buy holds its value at
its limit price plus the fee at the larger of the market's two rates (``state``
computes it from the terms, compiled); docs/ledger.md proves that a fill never needs
more than the hold set aside for it.
"""

from __future__ import annotations

import zlib
from decimal import Decimal

import msgspec

from tradeplane_engine.ledger.fees import BPS as BPS
from tradeplane_engine.ledger.fees import fee as fee

MAX_DECIMALS = 18
MAX_AMOUNT = 10**36
"""Largest amount in one deposit or withdrawal, in the asset's smallest units."""

FEES = "$fees"
"""The account fees are paid into, one per shard (``$`` is no trader account's)."""
WORLD = "$world"
"""The other side of deposits and withdrawals: its balance is minus what came in."""
CLEARING = "$clearing"
"""The other side of each trade leg. A trade settles in the shard of each of its two
accounts, each leg against this account; summed over every shard that has settled the
same events, it is zero."""
SYSTEM_ACCOUNTS = (FEES, WORLD, CLEARING)


def shard_of(account: str, shards: int) -> int:
    """The ledger shard that owns an account: stable across processes and versions."""
    return zlib.crc32(account.encode()) % shards


class TermsError(ValueError):
    """A market the ledger cannot fund: its grid is finer than its assets' units."""


class Terms(msgspec.Struct, frozen=True, array_like=True):
    """What the ledger needs of one market, in whole asset units."""

    market: str
    base: str
    quote: str
    base_per_lot: int
    """Smallest base units in one lot."""
    quote_per_unit: int
    """Smallest quote units in one tick × lot (price ticks × quantity lots)."""
    maker_bps: int
    taker_bps: int

    @classmethod
    def of(cls, market: str, base: str, quote: str, tick_size: str, lot_size: str,
           maker_bps: int, taker_bps: int, decimals: dict[str, int]) -> Terms:
        """A market's terms, given the decimals of its assets; TermsError when a lot or
        a tick × lot is not a whole number of units, or a fee is out of range."""
        for asset in (base, quote):
            if asset not in decimals:
                raise TermsError(f"market {market}: asset {asset} is not defined")
        if not 0 <= maker_bps <= 1000 or not 0 <= taker_bps <= 1000:
            raise TermsError(f"market {market}: fees must be 0 to 1000 basis points "
                             "(maker rebates are refused: docs/ledger.md)")
        lot = Decimal(lot_size).scaleb(decimals[base])
        unit = (Decimal(tick_size) * Decimal(lot_size)).scaleb(decimals[quote])
        if lot != lot.to_integral_value() or lot <= 0:
            raise TermsError(f"market {market}: a lot of {lot_size} {base} is not a whole "
                             f"number of units at {decimals[base]} decimals")
        if unit != unit.to_integral_value() or unit <= 0:
            raise TermsError(f"market {market}: a tick × lot ({tick_size} × {lot_size}) is "
                             f"not a whole number of {quote} units at {decimals[quote]} "
                             "decimals")
        return cls(market, base, quote, int(lot), int(unit), maker_bps, taker_bps)
