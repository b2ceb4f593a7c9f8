"""Snapshots and the state hash: one canonical encoding of everything that shapes the future.

A snapshot holds the market's definition, its mode, counters, reference price and
every resting order in priority order (best level first, then time), and nothing
else: the per-account indexes are rebuilt from the orders, and orders canceled but not
yet dropped from their queue are left out. The encoding is MessagePack of plain
integers, strings and lists in a fixed order, so it is byte-identical for identical
books in any process on any machine, and ``state_hash()`` is its SHA-256.
"""

from __future__ import annotations

import hashlib

import msgspec

from tradeplane_engine.core.commands import SelfTradePrevention, Side
from tradeplane_engine.core.market import MarketSpec, TradingMode

SNAPSHOT_VERSION = 1


class RestingOrder(msgspec.Struct, frozen=True, array_like=True, gc=False):
    order_id: int
    account: str
    client_order_id: str
    side: Side
    price: int
    quantity: int
    filled: int
    remaining: int
    post_only: bool
    stp: SelfTradePrevention


class EngineState(msgspec.Struct, frozen=True, array_like=True):
    version: int
    spec: MarketSpec
    mode: TradingMode
    last_sequence: int
    next_order_id: int
    next_trade_id: int
    reference_price: int
    bids: list[RestingOrder]
    asks: list[RestingOrder]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EngineState)


def encode(state: EngineState) -> bytes:
    return _encoder.encode(state)


def decode(data: bytes) -> EngineState:
    """Decode a snapshot; ``msgspec.ValidationError`` or ``ValueError`` when it is not one."""
    state = _decoder.decode(data)
    if state.version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {state.version} is not {SNAPSHOT_VERSION}")
    return state


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
