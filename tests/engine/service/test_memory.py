"""The engine's memory of finished orders: what it keeps, what it drops, and by what it
finds an order (engine/tradeplane_engine/service/memory.py)."""

from __future__ import annotations

import pytest

from tests.support.exchange import SOL
from tradeplane_engine.core import OrderStatus, RejectCode
from tradeplane_engine.core.events import OrderRejected, OrderUpdate
from tradeplane_engine.service import memory
from tradeplane_engine.service.memory import OrderMemory
from tradeplane_engine.wire import PublicFormatter


def filled(order_id: int, client_order_id: str = "") -> OrderUpdate:
    return OrderUpdate(order_id, "alice", client_order_id or f"c{order_id}",
                       OrderStatus.FILLED, 100, 0)


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten orders kept at least, in segments of four."""
    monkeypatch.setattr(memory, "RECENT_ORDERS", 10)
    monkeypatch.setattr(memory, "SEGMENT", 4)


@pytest.mark.usefixtures("small")
def test_keeps_at_least_the_last_orders_and_drops_the_oldest_whole() -> None:
    kept = OrderMemory(PublicFormatter(SOL.spec()))
    for order_id in range(1, 31):
        kept.remember([filled(order_id)])
        assert len(kept) >= min(order_id, 10)
        assert len(kept) <= 10 + 2 * 4  # never more than a segment or two above
    found = [order_id for order_id in range(1, 31)
             if kept.finished("alice", order_id, "") is not None]
    assert found == list(range(31 - len(found), 31))  # the newest, and no gap
    assert len(found) >= 10
    assert kept.finished("alice", 1, "") is None
    record = kept.finished("alice", 30, "")
    assert record is not None
    assert (record.order_id, record.client_order_id, record.status) == (30, "c30", "filled")


@pytest.mark.usefixtures("small")
def test_a_client_order_id_finds_its_last_order_across_segments() -> None:
    kept = OrderMemory(PublicFormatter(SOL.spec()))
    kept.remember([filled(1, "again")])
    for order_id in range(2, 7):  # order 1 is in an older segment now
        kept.remember([filled(order_id)])
    first = kept.finished("alice", 0, "again")
    assert first is not None
    assert first.order_id == 1
    kept.remember([filled(7, "again")])  # the id used again, after the first ended
    last = kept.finished("alice", 0, "again")
    assert last is not None
    assert last.order_id == 7
    assert kept.finished("bob", 0, "again") is None  # another account's is not


@pytest.mark.usefixtures("small")
def test_refused_places_are_kept_and_forget_empties_it() -> None:
    kept = OrderMemory(PublicFormatter(SOL.spec()))
    kept.remember([OrderRejected("alice", "refused", 0, RejectCode.INVALID_QUANTITY,
                                 "too small", "place")])
    record = kept.finished("alice", 0, "refused")
    assert record is not None
    assert record.status == "rejected"
    kept.forget()
    assert len(kept) == 0
    assert kept.finished("alice", 0, "refused") is None
