"""A ledger shard's snapshot: its whole state as one canonical JSON document.

These are the encoded forms only; ``Ledger.snapshot`` and ``Ledger.restore`` turn the
live state into them and back. They live apart from ``state`` because that module is
compiled (``scripts/build_native.py``), and msgspec's structs are defined in plain
Python.
"""

from __future__ import annotations

import msgspec

from tradeplane_engine.core.commands import Side
from tradeplane_engine.ledger.amounts import Terms

SNAPSHOT_VERSION = 1
"""Of ``LedgerState``, encoded in JSON."""


class OrderState(msgspec.Struct, array_like=True):
    """One order of the shard's accounts, as ``Funding`` holds it."""

    market: str
    account: str
    client_order_id: str
    side: Side
    price: int
    quantity: int
    remaining: int
    held: int
    funded_at: int = 0
    order_id: int = 0
    provisions: list[tuple[int, int, int, int]] = msgspec.field(default_factory=list)
    funded_index: int = 0
    """Its place in its ``fundOrders`` (0 for a ``fundOrder``)."""


class LedgerState(msgspec.Struct, array_like=True):
    version: int
    shard: int
    shards: int
    sequence: int
    decimals: list[tuple[str, int]]
    terms: list[Terms]
    balances: list[tuple[str, str, int, int]]
    transfers: list[tuple[str, str, str, str, int]]
    orders: list[OrderState]
    settled: list[tuple[str, int]]
    positions: list[tuple[str, int]]
    deposited: list[tuple[str, int]]
    withdrawn: list[tuple[str, int]]
    unfunded: int
    shortfalls: int
