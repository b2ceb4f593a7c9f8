"""How a fee is rounded: alone in a module, so that it is compiled with the ledger core
(``scripts/build_native.py``) while ``amounts`` keeps its msgspec struct in plain Python."""

from __future__ import annotations

from typing import Final

BPS: Final = 10_000
"""Basis points in one."""


def fee(value: int, bps: int) -> int:
    """``value`` × ``bps`` / 10 000, rounded up; never negative (rebates are refused)."""
    return -(-value * bps // BPS) if bps > 0 else 0
