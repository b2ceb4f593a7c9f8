"""Replace scenarios: the queue-priority rules and what a replace that crosses does.

A replace names the new price and the new TOTAL quantity (filled lots included; 0 keeps
the current value). A lower quantity at the same price keeps the order's place in the
queue; a new price or a higher quantity sends it to the back of its (new) level, and a
new price that crosses trades at once.
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import (
    DECREMENT,
    EXPIRE_TAKER,
    IOC,
    Book,
    Step,
    buy,
    cancel,
    describe,
    replace,
    sell,
)
from tradeplane_engine.core import BookLevel, MarketSpec, OrderReplaced, SelfTradePrevention, Side

BOOK: list[Step] = [buy("a", 5, 99), buy("b", 5, 99), sell("c", 5, 101), sell("d", 5, 102),
                    buy("e", 5, 98)]
"""Bids #1, #2 at 99 and #5 at 98; asks #3 at 101 and #4 at 102."""

REPLACES = [
    pytest.param(replace("a", 1, quantity=3), [
        "replaced #1 3 @ 99 left 3 priority kept",
        "level buy 99: 8 lots in 2",
    ], [1, 2, 5], [3, 4], id="lower quantity keeps priority"),
    pytest.param(replace("a", 1, price=99, quantity=2), [
        "replaced #1 2 @ 99 left 2 priority kept",
        "level buy 99: 7 lots in 2",
    ], [1, 2, 5], [3, 4], id="the same price given explicitly keeps priority"),
    pytest.param(replace("a", 1, quantity=5), [
        "replaced #1 5 @ 99 left 5 priority kept",
        "level buy 99: 10 lots in 2",
    ], [1, 2, 5], [3, 4], id="the same quantity keeps priority"),
    pytest.param(replace("a", 1), [
        "replaced #1 5 @ 99 left 5 priority kept",
        "level buy 99: 10 lots in 2",
    ], [1, 2, 5], [3, 4], id="zeros keep price and quantity"),
    pytest.param(replace("a", 1, quantity=8), [
        "replaced #1 8 @ 99 left 8 priority lost",
        "level buy 99: 13 lots in 2",
    ], [2, 1, 5], [3, 4], id="higher quantity goes to the back: one level event, the real one"),
    pytest.param(replace("a", 1, price=100), [
        "replaced #1 5 @ 100 left 5 priority lost",
        "level buy 99: 5 lots in 1",
        "level buy 100: 5 lots in 1",
    ], [1, 2, 5], [3, 4], id="new price at a new level"),
    pytest.param(replace("a", 1, price=98), [
        "replaced #1 5 @ 98 left 5 priority lost",
        "level buy 99: 5 lots in 1",
        "level buy 98: 10 lots in 2",
    ], [2, 5, 1], [3, 4], id="new price joins the back of an existing level"),
    pytest.param(replace("a", 1, price=98, quantity=2), [
        "replaced #1 2 @ 98 left 2 priority lost",
        "level buy 99: 5 lots in 1",
        "level buy 98: 7 lots in 2",
    ], [2, 5, 1], [3, 4], id="new price with a lower quantity still loses priority"),
    pytest.param(replace("e", 5, quantity=6), [
        "replaced #5 6 @ 98 left 6 priority lost",
        "level buy 98: 6 lots in 1",
    ], [1, 2, 5], [3, 4], id="the only order of a level re-enters it: the level never empties"),
    pytest.param(replace("a", 1, price=101), [
        "replaced #1 5 @ 101 left 5 priority lost",
        "level buy 99: 5 lots in 1",
        "trade 5 @ 101 maker #3 taker #1",
        "#3 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#1 filled filled 5 left 0",
    ], [2, 5], [4], id="a crossing price trades at once"),
    pytest.param(replace("a", 1, price=101, quantity=7), [
        "replaced #1 7 @ 101 left 7 priority lost",
        "level buy 99: 5 lots in 1",
        "trade 5 @ 101 maker #3 taker #1",
        "#3 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#1 partiallyFilled filled 5 left 2",
        "level buy 101: 2 lots in 1",
    ], [1, 2, 5], [4], id="a crossing price trades and rests the rest"),
    pytest.param(replace("d", 4, price=98, quantity=12), [
        "replaced #4 12 @ 98 left 12 priority lost",
        "level sell 102: 0 lots in 0",
        "trade 5 @ 99 maker #1 taker #4",
        "#1 filled filled 5 left 0",
        "trade 5 @ 99 maker #2 taker #4",
        "#2 filled filled 5 left 0",
        "level buy 99: 0 lots in 0",
        "trade 2 @ 98 maker #5 taker #4",
        "#5 partiallyFilled filled 2 left 3",
        "level buy 98: 3 lots in 1",
        "#4 filled filled 12 left 0",
    ], [5], [3], id="a crossing sell sweeps bids in priority order"),
]


@pytest.mark.parametrize(("step", "expected", "bids", "asks"), REPLACES)
def test_replace(step: Step, expected: list[str], bids: list[int], asks: list[int]) -> None:
    book = Book(steps=BOOK)
    assert book.log(step) == expected
    assert book.queue() == (bids, asks)


PARTIALLY_FILLED = [
    pytest.param(replace("a", 1, quantity=4), [
        "replaced #1 4 @ 99 left 2 priority kept",
        "level buy 99: 7 lots in 2",
    ], id="the new total counts the 2 lots filled"),
    pytest.param(replace("a", 1, quantity=3), [
        "replaced #1 3 @ 99 left 1 priority kept",
        "level buy 99: 6 lots in 2",
    ], id="one lot above the filled quantity is the least"),
    pytest.param(replace("a", 1, quantity=8), [
        "replaced #1 8 @ 99 left 6 priority lost",
        "level buy 99: 11 lots in 2",
    ], id="a higher total loses priority"),
    pytest.param(replace("a", 1, price=100), [
        "replaced #1 5 @ 100 left 3 priority lost",
        "level buy 99: 5 lots in 1",
        "level buy 100: 3 lots in 1",
    ], id="a new price keeps the total"),
    pytest.param(replace("a", 1, price=101, quantity=10), [
        "replaced #1 10 @ 101 left 8 priority lost",
        "level buy 99: 5 lots in 1",
        "trade 5 @ 101 maker #3 taker #1",
        "#3 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#1 partiallyFilled filled 7 left 3",
        "level buy 101: 3 lots in 1",
    ], id="fills are reported as totals over the order's life"),
    pytest.param(replace("a", 1, price=101, quantity=7), [
        "replaced #1 7 @ 101 left 5 priority lost",
        "level buy 99: 5 lots in 1",
        "trade 5 @ 101 maker #3 taker #1",
        "#3 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#1 filled filled 7 left 0",
    ], id="a crossing replace can complete the order"),
    pytest.param(replace("a", 1, quantity=2), ["rejected REPLACE_QUANTITY_TOO_LOW"],
                 id="a total equal to the filled quantity"),
    pytest.param(replace("a", 1, quantity=1), ["rejected REPLACE_QUANTITY_TOO_LOW"],
                 id="a total below the filled quantity"),
]


@pytest.mark.parametrize(("step", "expected"), PARTIALLY_FILLED)
def test_replace_a_partially_filled_order(step: Step, expected: list[str]) -> None:
    book = Book(steps=[*BOOK, sell("x", 2, 99)])  # #6 fills 2 of #1's 5
    assert book.log(step) == expected


def test_a_larger_replace_at_the_same_price_publishes_no_level_that_never_existed() -> None:
    """Regression: the level was published without the order (here: empty, 0 lots in 0
    orders) and then again with it, though the book never held the first state."""
    book = Book(steps=[buy("a", 5, 98)])
    events = book.do(replace("a", 1, quantity=6))
    assert [describe(event) for event in events if isinstance(event, BookLevel)] == [
        "level buy 98: 6 lots in 1"]
    assert book.depth() == ([(98, 6, 1)], [])


def test_replaced_event_carries_the_order_and_its_client_order_id() -> None:
    book = Book(steps=[buy("a", 5, 99, client_order_id="mine")])
    events = book.do(replace("a", client_order_id="mine", price=97, quantity=6))
    assert events[0] == OrderReplaced(order_id=1, account="a", client_order_id="mine",
                                      price=97, quantity=6, remaining_quantity=6,
                                      priority_kept=False, side=Side.BUY, filled_quantity=0)


def test_a_moved_order_keeps_its_client_order_id() -> None:
    book = Book(steps=[buy("a", 5, 99, client_order_id="mine"),
                       replace("a", 1, price=97, quantity=6)])
    assert book.log(buy("a", 1, 90, client_order_id="mine")) == [
        "rejected DUPLICATE_CLIENT_ORDER_ID"]
    assert book.log(cancel("a", client_order_id="mine")) == [
        "#1 canceled filled 0 left 0 USER",
        "level buy 97: 0 lots in 0",
    ]


def test_a_replaced_order_trades_as_its_new_self() -> None:
    book = Book(steps=[*BOOK, replace("a", 1, price=100, quantity=2)])
    assert book.log(sell("x", 3, 99)) == [
        "accepted #6",
        "trade 2 @ 100 maker #1 taker #6",
        "#1 filled filled 2 left 0",
        "level buy 100: 0 lots in 0",
        "trade 1 @ 99 maker #2 taker #6",
        "#2 partiallyFilled filled 1 left 4",
        "level buy 99: 4 lots in 1",
        "#6 filled filled 3 left 0",
    ]


REPLACE_INTO_OWN_ORDERS = [
    pytest.param(EXPIRE_TAKER, [
        "replaced #3 5 @ 101 left 5 priority lost",
        "level buy 99: 0 lots in 0",
        "#3 canceled filled 0 left 0 STP",
    ], id="the order's own expireTaker cancels it"),
    pytest.param(DECREMENT, [
        "replaced #3 5 @ 101 left 5 priority lost",
        "level buy 99: 0 lots in 0",
        "#1 canceled filled 0 left 0 STP",
        "level sell 101: 5 lots in 1",
        "#3 canceled filled 0 left 0 STP",
    ], id="the order's own decrement applies"),
]


@pytest.mark.parametrize(("stp", "expected"), REPLACE_INTO_OWN_ORDERS)
def test_a_crossing_replace_applies_the_orders_stp_mode(stp: SelfTradePrevention,
                                                         expected: list[str]) -> None:
    book = Book(steps=[sell("a", 5, 101), sell("b", 5, 101), buy("a", 5, 99, stp=stp)])
    assert book.log(replace("a", 3, price=101)) == expected


def test_a_post_only_order_replaced_across_the_spread_is_canceled() -> None:
    book = Book(steps=[sell("c", 5, 101), buy("a", 5, 99, post_only=True)])
    assert book.log(replace("a", 2, price=101)) == [
        "replaced #2 5 @ 101 left 5 priority lost",
        "level buy 99: 0 lots in 0",
        "#2 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ]
    assert book.queue() == ([], [1])


BANDED = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", price_band="10",
                    reference_price="100")

BAND = [
    pytest.param([], replace("a", 1, price=110), "replaced #1 5 @ 110 left 5 priority lost",
                 id="a new price at the band's edge"),
    pytest.param([], replace("a", 1, price=111), "rejected OUTSIDE_PRICE_BAND",
                 id="a new price beyond the band"),
    pytest.param([sell("b", 1, 110), buy("c", 1, 110)], replace("a", 1, quantity=3),
                 "replaced #1 3 @ 91 left 3 priority kept",
                 id="a smaller order left outside a moved band"),
    pytest.param([sell("b", 1, 110), buy("c", 1, 110)], replace("a", 1, quantity=8),
                 "replaced #1 8 @ 91 left 8 priority lost",
                 id="a larger order left outside a moved band: the price did not change"),
    pytest.param([sell("b", 1, 110), buy("c", 1, 110)], replace("a", 1, price=98),
                 "rejected OUTSIDE_PRICE_BAND", id="moving within the old band, not the new"),
]


@pytest.mark.parametrize(("setup", "step", "first_event"), BAND)
def test_replace_and_the_price_band(setup: list[Step], step: Step, first_event: str) -> None:
    book = Book(BANDED, [buy("a", 5, 91), *setup])
    assert book.log(step)[0] == first_event


def test_replace_below_min_notional_is_rejected() -> None:
    spec = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", min_notional="100")
    book = Book(spec, [buy("a", 10, 10)])
    assert book.log(replace("a", 1, quantity=9)) == ["rejected BELOW_MIN_NOTIONAL"]
    assert book.log(replace("a", 1, price=9)) == ["rejected BELOW_MIN_NOTIONAL"]
    assert book.log(replace("a", 1, price=9, quantity=12))[0] == (
        "replaced #1 12 @ 9 left 12 priority lost")


REFUSED = [
    pytest.param(replace("b", 1, quantity=3), "UNKNOWN_ORDER", id="another account's order"),
    pytest.param(replace("a", 9, quantity=3), "UNKNOWN_ORDER", id="an id never used"),
    pytest.param(replace("a", client_order_id="zz", quantity=3), "UNKNOWN_ORDER",
                 id="an unknown client order id"),
    pytest.param(replace("c", 3, price=-1), "INVALID_PRICE", id="a negative price"),
    pytest.param(replace("c", 3, quantity=-5), "INVALID_QUANTITY", id="a negative quantity"),
    pytest.param(replace("c", 3, quantity=2**53), "INVALID_QUANTITY",
                 id="a quantity above the maximum"),
]


@pytest.mark.parametrize(("step", "code"), REFUSED)
def test_refused_replace_changes_nothing(step: Step, code: str) -> None:
    book = Book(steps=BOOK)
    before = book.depth(), book.queue()
    assert book.log(step) == [f"rejected {code}"]
    assert (book.depth(), book.queue()) == before


def test_a_filled_order_cannot_be_replaced() -> None:
    book = Book(steps=[*BOOK, buy("x", 5, 101)])
    assert book.log(replace("c", 3, quantity=8)) == ["rejected UNKNOWN_ORDER"]


# #1 rests 10 lots; "a"'s own buy of 6 with STP decrement takes 6 of them without a trade,
# leaving 4 open of a total of 10. A replace's new total still counts those 6 as gone.
DECREMENTED: list[Step] = [sell("a", 10, 100), buy("a", 6, 100, stp=DECREMENT)]

AFTER_A_DECREMENT = [
    pytest.param(replace("a", 1, quantity=5), ["rejected REPLACE_QUANTITY_TOO_LOW"], {1: 4},
                 id="a total below the lots already gone leaves nothing open"),
    pytest.param(replace("a", 1, quantity=6), ["rejected REPLACE_QUANTITY_TOO_LOW"], {1: 4},
                 id="a total equal to the lots already gone leaves nothing open"),
    pytest.param(replace("a", 1, quantity=7), [
        "replaced #1 7 @ 100 left 1 priority kept",
        "level sell 100: 1 lots in 1",
    ], {1: 1}, id="a lower total keeps what is left above the lots gone"),
    pytest.param(replace("a", 1, price=101), [
        "replaced #1 10 @ 101 left 4 priority lost",
        "level sell 100: 0 lots in 0",
        "level sell 101: 4 lots in 1",
    ], {1: 4}, id="a new price does not bring the lots gone back"),
    pytest.param(replace("a", 1, quantity=12), [
        "replaced #1 12 @ 100 left 6 priority lost",
        "level sell 100: 6 lots in 1",
    ], {1: 6}, id="a higher total adds to what is left"),
]


@pytest.mark.parametrize(("step", "expected", "remaining"), AFTER_A_DECREMENT)
def test_replace_after_a_self_trade_decrement(step: Step, expected: list[str],
                                              remaining: dict[int, int]) -> None:
    """Regression: a replace that kept priority once left such an order -3 or 0 lots open
    (and a level holding a 0-lot order made the next order to reach it loop forever); one
    that lost priority brought the 6 lots back."""
    book = Book(steps=DECREMENTED)
    assert book.remaining() == {1: 4}
    assert book.log(step) == expected
    assert book.remaining() == remaining
    price = book.engine.l3().asks[0].price
    assert book.log(buy("b", 20, price, time_in_force=IOC))[-1] == (
        f"#3 canceled filled {remaining[1]} left 0 IOC_REMAINDER")
    assert book.depth() == ([], [])
