"""How a fee is rounded: alone in a module, so that it is compiled with the ledger core
(``scripts/build_native.py``) while ``amounts`` keeps its msgspec struct in plain Python."""

from __future__ import annotations

from typing import Final

BPS: Final = 10_000
"""Basis points in one."""


def fee(value: int, bps: int) -> int:
    """``value`` × ``bps`` / 10 000, rounded up; never negative (rebates are refused).

    Compiled, a product of two machine-size integers stays unboxed only when both are
    non-negative (mypyc's overflow check is conservative), so a value is not negated
    before it is multiplied."""
    if bps <= 0:
        return 0
    product = value * bps
    if product >= 0:
        return (product + BPS - 1) // BPS
    return -(-product // BPS)
