"""Sequencing, order and trade ids, big numbers, read-only views and snapshots.

What the engine promises about its state rather than about matching: commands apply
in sequence order only, ids count up without gaps, L2 and L3 show the book as it is,
and a snapshot restores to an engine that continues exactly as the original would.
"""

from __future__ import annotations

from typing import cast

import msgspec
import pytest

from tests.engine.core.helpers import (
    BOOK,
    BUY,
    EXPIRE_MAKER,
    GTC,
    IOC,
    SELL,
    SPEC,
    Book,
    buy,
    cancel,
    market_buy,
    market_sell,
    sell,
)
from tradeplane_engine.core import (
    MAX_UNITS,
    AnyCommand,
    Command,
    Engine,
    MarketSpec,
    OrderAccepted,
    OrderRejected,
    OrderType,
    RejectCode,
    Trade,
)

# -- sequencing and ids -----------------------------------------------------------------

def test_sequence_must_rise_and_a_replay_changes_nothing() -> None:
    engine = Engine(SPEC)
    assert isinstance(engine.apply(buy("a", 1, 90)(5, 0))[0], OrderAccepted)
    state = engine.state_hash()
    for sequence in (5, 4, 0, -1):
        [event] = engine.apply(buy("a", 1, 91)(sequence, 0))
        assert isinstance(event, OrderRejected)
        assert event.code is RejectCode.SEQUENCE_OUT_OF_ORDER
        assert "5" in event.reason
    assert engine.state_hash() == state
    assert engine.apply(buy("a", 1, 91)(6, 0))[0] == OrderAccepted(
        order_id=2, account="a", client_order_id="", side=BUY, order_type=OrderType.LIMIT,
        price=91, quantity=1, quote_amount=0, time_in_force=GTC, post_only=False,
        stp=EXPIRE_MAKER,
    )


def test_a_rejected_command_still_uses_up_its_sequence() -> None:
    engine = Engine(SPEC)
    assert engine.apply(buy("a", 0, 90)(1, 0))[0] == OrderRejected(
        "a", "", 0, RejectCode.INVALID_QUANTITY, "quantity must be 1 lot or more", "place")
    [event] = engine.apply(buy("a", 1, 90)(1, 0))
    assert isinstance(event, OrderRejected)
    assert event.code is RejectCode.SEQUENCE_OUT_OF_ORDER


def test_the_commands_of_one_message_apply_in_index_order_once() -> None:
    """Commands of one command-stream message share its sequence: (sequence, index)
    must rise, so none of them applies twice, and a restored engine takes its snapshot's
    sequence as applied whole."""
    engine = Engine(SPEC)
    for index in range(3):
        placed = msgspec.structs.replace(buy("a", 1, 90 + index)(7, 0), index=index)
        assert isinstance(engine.apply(placed)[0], OrderAccepted)
    state = engine.state_hash()

    def refusal(engine: Engine, sequence: int, index: int) -> str:
        [event] = engine.apply(msgspec.structs.replace(buy("a", 1, 95)(sequence, 0),
                                                       index=index))
        assert isinstance(event, OrderRejected)
        assert event.code is RejectCode.SEQUENCE_OUT_OF_ORDER
        return event.reason

    assert [refusal(engine, 7, index) for index in (2, 1, 0)] == [
        f"command {index} of sequence 7 is not above command 2 of it" for index in (2, 1, 0)]
    assert refusal(engine, 6, 5) == "sequence 6 is not above 7"
    assert engine.state_hash() == state
    restored = Engine.restore(engine.snapshot())
    assert refusal(restored, 7, 3) == "sequence 7 is in the snapshot the engine started from"
    assert isinstance(restored.apply(buy("a", 1, 95)(8, 0))[0], OrderAccepted)
    assert isinstance(engine.apply(msgspec.structs.replace(buy("a", 1, 95)(7, 0),
                                                           index=3))[0], OrderAccepted)


def test_sequences_may_have_gaps() -> None:
    engine = Engine(SPEC)
    for sequence in (3, 10, 1_000_000):
        assert isinstance(engine.apply(buy("a", 1, 90)(sequence, 0))[0], OrderAccepted)
    assert engine.l3().sequence == engine.l2().sequence == 1_000_000


def test_order_and_trade_ids_count_up_and_skip_nothing() -> None:
    book = Book(steps=[sell("a", 2, 100), buy("b", 0, 100), sell("a", 2, 101)])
    events = book.do(market_buy("b", 4))
    events += book.do(sell("a", 1, 100))
    events += book.do(buy("b", 1, 100, time_in_force=IOC))
    accepted = [e.order_id for e in events if isinstance(e, OrderAccepted)]
    trades = [(e.trade_id, e.maker_order_id, e.taker_order_id)
              for e in events if isinstance(e, Trade)]
    assert accepted == [3, 4, 5]
    assert trades == [(1, 1, 3), (2, 2, 3), (3, 4, 5)]


def test_the_largest_prices_and_quantities_trade_exactly() -> None:
    # Notional values reach 2**106: far beyond 64 bits, in compiled code too.
    book = Book(steps=[sell("a", MAX_UNITS, MAX_UNITS), sell("a", 2, MAX_UNITS)])
    assert book.log(market_buy("b", MAX_UNITS)) == [
        "accepted #3",
        f"trade {MAX_UNITS} @ {MAX_UNITS} maker #1 taker #3",
        f"#1 filled filled {MAX_UNITS} left 0",
        f"level sell {MAX_UNITS}: 2 lots in 1",
        f"#3 filled filled {MAX_UNITS} left 0",
    ]
    # The largest quote amount is MAX_UNITS tick x lot units, as at the edge: one lot here.
    assert book.log(market_buy("b", quote_amount=MAX_UNITS)) == [
        "accepted #4",
        f"trade 1 @ {MAX_UNITS} maker #2 taker #4",
        "#2 partiallyFilled filled 1 left 1",
        f"level sell {MAX_UNITS}: 1 lots in 1",
        "#4 filled filled 1 left 0",
    ]
    assert book.log(buy("b", MAX_UNITS, MAX_UNITS))[-1] == (
        f"level buy {MAX_UNITS}: {MAX_UNITS - 1} lots in 1")
    spec = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1",
                      min_notional=str(MAX_UNITS * MAX_UNITS))
    assert Book(spec).log(buy("a", MAX_UNITS, MAX_UNITS - 1)) == ["rejected BELOW_MIN_NOTIONAL"]
    assert Book(spec).log(buy("a", MAX_UNITS, MAX_UNITS))[0] == "accepted #1"


def test_trade_event_fields() -> None:
    book = Book(steps=[buy("maker", 3, 100, client_order_id="m")])
    events = book.do(sell("taker", 2, 95, client_order_id="t"))
    assert events[1] == Trade(trade_id=1, price=100, quantity=2, aggressor_side=SELL,
                              maker_order_id=1, maker_account="maker", taker_order_id=2,
                              taker_account="taker")
    assert book.engine.reference_price == 100


def test_unknown_command_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="not a command"):
        Engine(SPEC).apply(cast(AnyCommand, Command(sequence=1, timestamp=0)))


# -- read-only views and snapshots ------------------------------------------------------

def test_l2_is_best_first_and_cut_at_depth() -> None:
    book = Book(steps=[*BOOK, sell("s4", 1, 103), buy("b4", 1, 97)])
    l2 = book.engine.l2(depth=2)
    assert l2.sequence == 8
    assert [(lv.price, lv.quantity, lv.order_count) for lv in l2.bids] == [(99, 10, 2),
                                                                            (98, 5, 1)]
    assert [(lv.price, lv.quantity, lv.order_count) for lv in l2.asks] == [(101, 10, 2),
                                                                            (102, 5, 1)]
    assert book.engine.l2(depth=0).bids == []
    assert len(book.engine.l2().asks) == 3


def test_l3_lists_every_order_in_priority_order() -> None:
    book = Book(steps=[*BOOK, buy("t", 2, 101), buy("b4", 1, 99)])
    l3 = book.engine.l3()
    assert [(o.order_id, o.account, o.price, o.remaining) for o in l3.asks] == [
        (1, "s1", 101, 3), (2, "s2", 101, 5), (3, "s3", 102, 5)]
    assert [(o.order_id, o.price) for o in l3.bids] == [(4, 99), (5, 99), (8, 99), (6, 98)]


def test_snapshot_restore_continues_exactly() -> None:
    book = Book(steps=[*BOOK, buy("t", 2, 101, client_order_id="c"), cancel("b2", 5),
                       sell("x", 1, 98), buy("k", 1, 90, client_order_id="keep")])
    restored = book.restored()
    assert restored.engine.snapshot() == book.engine.snapshot()
    assert restored.engine.state_hash() == book.engine.state_hash()
    assert restored.engine.l3() == book.engine.l3()
    assert restored.engine.reference_price == book.engine.reference_price == 99
    follow_up = [cancel("s1", 1), buy("t", 1, 101, client_order_id="c"), market_sell("y", 9),
                 buy("k", 1, 91, client_order_id="keep"), cancel("k", client_order_id="keep"),
                 buy("z", 20, 102), sell("w", 1, 95)]
    logs = [restored.log(step) for step in follow_up]
    assert logs == [book.log(step) for step in follow_up]
    assert logs[3] == ["rejected DUPLICATE_CLIENT_ORDER_ID"]
    assert logs[4][0] == "#9 canceled filled 0 left 0 USER"
    assert restored.engine.state_hash() == book.engine.state_hash()


def test_state_hash_tells_books_apart() -> None:
    one = Book(steps=BOOK)
    other = Book(steps=BOOK)
    assert one.engine.state_hash() == other.engine.state_hash()
    other.do(cancel("b1", 4))
    one.do(cancel("b2", 4))  # rejected, but the sequence still moves on
    assert one.engine.state_hash() != other.engine.state_hash()


@pytest.mark.parametrize("data", [b"", b"\x93\x01\x02\x03", msgspec.msgpack.encode([2])])
def test_restore_refuses_what_is_not_a_snapshot(data: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError, ValueError)):
        Engine.restore(data)


def test_restore_refuses_another_snapshot_version() -> None:
    state = msgspec.msgpack.decode(Engine(SPEC).snapshot())
    state[0] = 99
    with pytest.raises(ValueError, match="version 99"):
        Engine.restore(msgspec.msgpack.encode(state))
