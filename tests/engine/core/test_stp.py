"""Self-trade prevention scenarios: every STP mode against an account's own resting orders.

The incoming (taker) order's mode governs. The tables start from account "a" resting
#1 and account "b" resting #2 behind it at the same price, then send "a"'s taker (#3).
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import (
    DECREMENT,
    EXPIRE_BOTH,
    EXPIRE_MAKER,
    EXPIRE_TAKER,
    FOK,
    IOC,
    STP_NONE,
    Book,
    Step,
    buy,
    market_buy,
    replace,
    sell,
)
from tradeplane_engine.core import Place, SelfTradePrevention, Side

OWN_FIRST: list[Step] = [sell("a", 5, 100), sell("b", 5, 100)]
"""#1 is the taker's own ask, #2 another account's ask behind it, both at 100."""

STP_TAKER_LARGER = [
    pytest.param(STP_NONE, [
        "accepted #3",
        "trade 5 @ 100 maker #1 taker #3",
        "#1 filled filled 5 left 0",
        "trade 3 @ 100 maker #2 taker #3",
        "#2 partiallyFilled filled 3 left 2",
        "level sell 100: 2 lots in 1",
        "#3 filled filled 8 left 0",
    ], id="none: the self-trade happens"),
    pytest.param(EXPIRE_TAKER, [
        "accepted #3",
        "#3 canceled filled 0 left 0 STP",
    ], id="expireTaker: the taker goes, the book stays"),
    pytest.param(EXPIRE_MAKER, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 5 @ 100 maker #2 taker #3",
        "#2 filled filled 5 left 0",
        "level sell 100: 0 lots in 0",
        "#3 partiallyFilled filled 5 left 3",
        "level buy 100: 3 lots in 1",
    ], id="expireMaker: the own order goes, matching goes on"),
    pytest.param(EXPIRE_BOTH, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "level sell 100: 5 lots in 1",
        "#3 canceled filled 0 left 0 STP",
    ], id="expireBoth: both go"),
    pytest.param(DECREMENT, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 3 @ 100 maker #2 taker #3",
        "#2 partiallyFilled filled 3 left 2",
        "level sell 100: 2 lots in 1",
        "#3 filled filled 3 left 0",
    ], id="decrement: both lose 5, the smaller goes, the taker's 3 left trade"),
]


@pytest.mark.parametrize(("stp", "expected"), STP_TAKER_LARGER)
def test_stp_modes_with_a_larger_taker(stp: SelfTradePrevention, expected: list[str]) -> None:
    assert Book(steps=OWN_FIRST).log(buy("a", 8, 100, stp=stp)) == expected


STP_TAKER_SMALLER = [
    pytest.param(STP_NONE, [
        "accepted #3",
        "trade 3 @ 100 maker #1 taker #3",
        "#1 partiallyFilled filled 3 left 2",
        "level sell 100: 7 lots in 2",
        "#3 filled filled 3 left 0",
    ], id="none"),
    pytest.param(EXPIRE_TAKER, [
        "accepted #3",
        "#3 canceled filled 0 left 0 STP",
    ], id="expireTaker"),
    pytest.param(EXPIRE_MAKER, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 3 @ 100 maker #2 taker #3",
        "#2 partiallyFilled filled 3 left 2",
        "level sell 100: 2 lots in 1",
        "#3 filled filled 3 left 0",
    ], id="expireMaker"),
    pytest.param(EXPIRE_BOTH, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "level sell 100: 5 lots in 1",
        "#3 canceled filled 0 left 0 STP",
    ], id="expireBoth"),
    pytest.param(DECREMENT, [
        "accepted #3",
        "#1 reduced filled 0 left 2 STP",
        "level sell 100: 7 lots in 2",
        "#3 canceled filled 0 left 0 STP",
    ], id="decrement: the maker is reduced, the taker is used up"),
]


@pytest.mark.parametrize(("stp", "expected"), STP_TAKER_SMALLER)
def test_stp_modes_with_a_smaller_taker(stp: SelfTradePrevention, expected: list[str]) -> None:
    assert Book(steps=OWN_FIRST).log(buy("a", 3, 100, stp=stp)) == expected


def test_decrement_of_equal_quantities_cancels_both() -> None:
    assert Book(steps=OWN_FIRST).log(buy("a", 5, 100, stp=DECREMENT)) == [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "level sell 100: 5 lots in 1",
        "#3 canceled filled 0 left 0 STP",
    ]


def test_a_reduced_maker_keeps_its_place_and_trades_its_rest() -> None:
    book = Book(steps=[*OWN_FIRST, buy("a", 3, 100, stp=DECREMENT)])
    assert book.queue() == ([], [1, 2])
    assert book.log(buy("c", 4, 100)) == [
        "accepted #4",
        "trade 2 @ 100 maker #1 taker #4",
        "#1 filled filled 2 left 0",
        "trade 2 @ 100 maker #2 taker #4",
        "#2 partiallyFilled filled 2 left 3",
        "level sell 100: 3 lots in 1",
        "#4 filled filled 4 left 0",
    ]


@pytest.mark.parametrize(("stp", "expected"), [
    pytest.param(EXPIRE_TAKER, [
        "accepted #3",
        "trade 5 @ 100 maker #1 taker #3",
        "#1 filled filled 5 left 0",
        "level sell 100: 5 lots in 1",
        "#3 canceled filled 5 left 0 STP",
    ], id="expireTaker keeps what it traded before reaching its own order"),
    pytest.param(EXPIRE_BOTH, [
        "accepted #3",
        "trade 5 @ 100 maker #1 taker #3",
        "#1 filled filled 5 left 0",
        "#2 canceled filled 0 left 0 STP",
        "level sell 100: 0 lots in 0",
        "#3 canceled filled 5 left 0 STP",
    ], id="expireBoth after a fill"),
])
def test_stp_after_trading_with_others(stp: SelfTradePrevention, expected: list[str]) -> None:
    book = Book(steps=[sell("b", 5, 100), sell("a", 5, 100)])
    assert book.log(buy("a", 8, 100, stp=stp)) == expected


def test_the_takers_mode_governs_not_the_makers() -> None:
    book = Book(steps=[sell("a", 5, 100, stp=EXPIRE_TAKER)])
    assert book.log(buy("a", 2, 100, stp=STP_NONE))[1] == "trade 2 @ 100 maker #1 taker #2"
    book = Book(steps=[sell("a", 5, 100, stp=STP_NONE)])
    assert book.log(buy("a", 2, 100, stp=EXPIRE_TAKER)) == [
        "accepted #2", "#2 canceled filled 0 left 0 STP"]


def test_expire_maker_is_the_default() -> None:
    assert Place(1, 0, account="a", side=Side.BUY).stp is EXPIRE_MAKER
    assert Book(steps=OWN_FIRST).log(buy("a", 1, 100))[1] == "#1 canceled filled 0 left 0 STP"


def test_orders_of_other_accounts_never_trigger_stp() -> None:
    book = Book(steps=[sell("b", 5, 100)])
    assert book.log(buy("a", 5, 100, stp=EXPIRE_BOTH))[1] == "trade 5 @ 100 maker #1 taker #2"


FOK_WITH_OWN_ORDERS = [
    pytest.param(OWN_FIRST, STP_NONE, [
        "accepted #3",
        "trade 5 @ 100 maker #1 taker #3",
        "#1 filled filled 5 left 0",
        "level sell 100: 5 lots in 1",
        "#3 filled filled 5 left 0",
    ], id="none: the own order fills it"),
    pytest.param(OWN_FIRST, EXPIRE_MAKER, [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 5 @ 100 maker #2 taker #3",
        "#2 filled filled 5 left 0",
        "level sell 100: 0 lots in 0",
        "#3 filled filled 5 left 0",
    ], id="expireMaker: the own order is skipped, the rest fills it"),
    pytest.param(OWN_FIRST, EXPIRE_TAKER, [
        "accepted #3",
        "#3 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="expireTaker: killed, the own order stays"),
    pytest.param(OWN_FIRST, EXPIRE_BOTH, [
        "accepted #3",
        "#3 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="expireBoth: killed, the own order stays"),
    pytest.param(OWN_FIRST, DECREMENT, [
        "accepted #3",
        "#3 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="decrement: killed, nothing reduced"),
    pytest.param([sell("a", 5, 100), sell("b", 3, 100)], EXPIRE_MAKER, [
        "accepted #3",
        "#3 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="expireMaker: too little without the own order, and the own order stays"),
    pytest.param([sell("b", 5, 100), sell("a", 5, 100)], EXPIRE_TAKER, [
        "accepted #3",
        "trade 5 @ 100 maker #1 taker #3",
        "#1 filled filled 5 left 0",
        "level sell 100: 5 lots in 1",
        "#3 filled filled 5 left 0",
    ], id="expireTaker: the own order behind the fill does not matter"),
    pytest.param([sell("b", 3, 100), sell("a", 5, 100), sell("c", 5, 101)], DECREMENT, [
        "accepted #4",
        "#4 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="decrement: an own order in the way kills it despite liquidity beyond"),
]


@pytest.mark.parametrize(("setup", "stp", "expected"), FOK_WITH_OWN_ORDERS)
def test_fok_with_own_orders(setup: list[Step], stp: SelfTradePrevention,
                             expected: list[str]) -> None:
    book = Book(steps=setup)
    resting = book.remaining()
    events = book.log(buy("a", 5, 101, time_in_force=FOK, stp=stp))
    assert events == expected
    if events[-1].endswith("FOK_UNFILLED"):
        assert book.remaining() == resting


@pytest.mark.parametrize(("step", "expected"), [
    pytest.param(buy("a", 8, 100, time_in_force=IOC, stp=EXPIRE_MAKER), [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 5 @ 100 maker #2 taker #3",
        "#2 filled filled 5 left 0",
        "level sell 100: 0 lots in 0",
        "#3 canceled filled 5 left 0 IOC_REMAINDER",
    ], id="IOC expireMaker"),
    pytest.param(market_buy("a", 8, stp=EXPIRE_TAKER), [
        "accepted #3",
        "#3 canceled filled 0 left 0 STP",
    ], id="market expireTaker"),
    pytest.param(market_buy("a", quote_amount=300, stp=EXPIRE_MAKER), [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 3 @ 100 maker #2 taker #3",
        "#2 partiallyFilled filled 3 left 2",
        "level sell 100: 2 lots in 1",
        "#3 filled filled 3 left 0",
    ], id="market by quote amount expireMaker"),
    pytest.param(buy("a", 1, 100, post_only=True, stp=STP_NONE), [
        "accepted #3",
        "#3 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ], id="post-only crossing its own order is still a cross"),
])
def test_stp_with_other_order_types(step: Step, expected: list[str]) -> None:
    assert Book(steps=OWN_FIRST).log(step) == expected


# The incoming order's own update tells what a decrement took from it: when it stays
# open (rests) after matching, it gets a ``reduced`` update (reason STP) with its filled
# and remaining quantity, so its events alone give its open quantity.
DECREMENT_THEN_REST = [
    pytest.param([sell("a", 4, 9)], buy("a", 5, 9, stp=DECREMENT), [
        "accepted #2",
        "#1 canceled filled 0 left 0 STP",
        "level sell 9: 0 lots in 0",
        "#2 reduced filled 0 left 1 STP",
        "level buy 9: 1 lots in 1",
    ], {2: 1}, id="the own order is used up, the taker rests what is left"),
    pytest.param([sell("b", 2, 9), sell("a", 4, 9)], buy("a", 10, 9, stp=DECREMENT), [
        "accepted #3",
        "trade 2 @ 9 maker #1 taker #3",
        "#1 filled filled 2 left 0",
        "#2 canceled filled 0 left 0 STP",
        "level sell 9: 0 lots in 0",
        "#3 reduced filled 2 left 4 STP",
        "level buy 9: 4 lots in 1",
    ], {3: 4}, id="a fill, then a decrement, then it rests: reduced, not partiallyFilled"),
    pytest.param([sell("a", 4, 9), sell("b", 2, 9)], buy("a", 10, 9, stp=DECREMENT), [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "trade 2 @ 9 maker #2 taker #3",
        "#2 filled filled 2 left 0",
        "level sell 9: 0 lots in 0",
        "#3 reduced filled 2 left 4 STP",
        "level buy 9: 4 lots in 1",
    ], {3: 4}, id="a decrement, then a fill, then it rests"),
    pytest.param([sell("a", 4, 9), sell("a", 3, 10)], buy("a", 10, 10, stp=DECREMENT), [
        "accepted #3",
        "#1 canceled filled 0 left 0 STP",
        "level sell 9: 0 lots in 0",
        "#2 canceled filled 0 left 0 STP",
        "level sell 10: 0 lots in 0",
        "#3 reduced filled 0 left 3 STP",
        "level buy 10: 3 lots in 1",
    ], {3: 3}, id="decrements at two levels: one update with the total"),
]


@pytest.mark.parametrize(("setup", "step", "expected", "resting"), DECREMENT_THEN_REST)
def test_a_decremented_incoming_order_that_rests_says_so(
        setup: list[Step], step: Step, expected: list[str], resting: dict[int, int]) -> None:
    """Regression: the taker rested with fewer lots than its events said (no update, or
    ``partiallyFilled`` with the lots the decrement took counted nowhere)."""
    book = Book(steps=setup)
    assert book.log(step) == expected
    assert book.remaining() == resting


def test_a_decremented_replace_that_rests_says_so() -> None:
    """Regression: the same, for an order a crossing replace sends into its own order."""
    book = Book(steps=[sell("a", 4, 9), buy("a", 5, 8, stp=DECREMENT)])
    assert book.log(replace("a", 2, price=9)) == [
        "replaced #2 5 @ 9 left 5 priority lost",
        "level buy 8: 0 lots in 0",
        "#1 canceled filled 0 left 0 STP",
        "level sell 9: 0 lots in 0",
        "#2 reduced filled 0 left 1 STP",
        "level buy 9: 1 lots in 1",
    ]
    assert book.remaining() == {2: 1}
    book = Book(steps=[sell("b", 1, 9), sell("a", 2, 9), buy("a", 6, 8, stp=DECREMENT)])
    assert book.log(replace("a", 3, price=9)) == [
        "replaced #3 6 @ 9 left 6 priority lost",
        "level buy 8: 0 lots in 0",
        "trade 1 @ 9 maker #1 taker #3",
        "#1 filled filled 1 left 0",
        "#2 canceled filled 0 left 0 STP",
        "level sell 9: 0 lots in 0",
        "#3 reduced filled 1 left 3 STP",
        "level buy 9: 3 lots in 1",
    ]
    assert book.remaining() == {3: 3}
