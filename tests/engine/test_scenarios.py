"""Order-book scenarios for the matching engine, written as tables.

Each row starts from a small book, applies one command and lists the exact events it
must produce, in the notation of ``helpers.describe``. The tables cover limit orders
(GTC, IOC, FOK, post-only), market orders (by quantity and by quote amount), the price
band, the minimum notional, client order ids, cancels, cancel-all, sequencing and the
read-only views. Self-trade prevention, replace, trading modes and rejections have
their own files.
"""

from __future__ import annotations

from typing import cast

import msgspec
import pytest

from tests.engine.helpers import (
    BUY,
    EXPIRE_MAKER,
    FOK,
    GTC,
    IOC,
    SELL,
    SPEC,
    Book,
    Step,
    buy,
    cancel,
    cancel_all,
    market_buy,
    market_sell,
    sell,
)
from tradeplane_engine.core import (
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

ASKS: list[Step] = [sell("s1", 5, 101), sell("s2", 5, 101), sell("s3", 5, 102)]
"""Asks #1 and #2 at 101 (in that time order), #3 at 102."""
BIDS: list[Step] = [buy("b1", 5, 99), buy("b2", 5, 99), buy("b3", 5, 98)]
"""Bids #4 and #5 at 99 (in that time order), #6 at 98, when placed after ASKS."""
BOOK = ASKS + BIDS
"""Both sides: the next order is #7."""


LIMIT_ORDERS = [
    pytest.param(buy("t", 4, 100), [
        "accepted #7",
        "level buy 100: 4 lots in 1",
    ], id="GTC that does not cross rests at a new level"),
    pytest.param(buy("t", 4, 99), [
        "accepted #7",
        "level buy 99: 14 lots in 3",
    ], id="GTC joins the back of an existing level"),
    pytest.param(buy("t", 5, 101), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "level sell 101: 5 lots in 1",
        "#7 filled filled 5 left 0",
    ], id="fills the oldest maker at the best price exactly"),
    pytest.param(buy("t", 3, 101), [
        "accepted #7",
        "trade 3 @ 101 maker #1 taker #7",
        "#1 partiallyFilled filled 3 left 2",
        "level sell 101: 7 lots in 2",
        "#7 filled filled 3 left 0",
    ], id="partially fills a maker"),
    pytest.param(buy("t", 12, 102), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 2 @ 102 maker #3 taker #7",
        "#3 partiallyFilled filled 2 left 3",
        "level sell 102: 3 lots in 1",
        "#7 filled filled 12 left 0",
    ], id="price-time priority across makers and levels"),
    pytest.param(buy("t", 5, 110), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "level sell 101: 5 lots in 1",
        "#7 filled filled 5 left 0",
    ], id="trades at the maker's price, not the taker's"),
    pytest.param(buy("t", 12, 101), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#7 partiallyFilled filled 10 left 2",
        "level buy 101: 2 lots in 1",
    ], id="GTC partially filled rests the rest at its price"),
    pytest.param(sell("t", 7, 98), [
        "accepted #7",
        "trade 5 @ 99 maker #4 taker #7",
        "#4 filled filled 5 left 0",
        "trade 2 @ 99 maker #5 taker #7",
        "#5 partiallyFilled filled 2 left 3",
        "level buy 99: 3 lots in 1",
        "#7 filled filled 7 left 0",
    ], id="a sell takes the best bids first"),
    pytest.param(buy("t", 12, 101, time_in_force=IOC), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "#7 canceled filled 10 left 0 IOC_REMAINDER",
    ], id="IOC cancels its remainder"),
    pytest.param(buy("t", 5, 100, time_in_force=IOC), [
        "accepted #7",
        "#7 canceled filled 0 left 0 IOC_REMAINDER",
    ], id="IOC that does not cross is canceled whole"),
    pytest.param(buy("t", 5, 101, time_in_force=IOC), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "level sell 101: 5 lots in 1",
        "#7 filled filled 5 left 0",
    ], id="IOC filled completely"),
    pytest.param(buy("t", 15, 102, time_in_force=FOK), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 5 @ 102 maker #3 taker #7",
        "#3 filled filled 5 left 0",
        "level sell 102: 0 lots in 0",
        "#7 filled filled 15 left 0",
    ], id="FOK that can fill takes every lot it needs"),
    pytest.param(buy("t", 16, 102, time_in_force=FOK), [
        "accepted #7",
        "#7 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="FOK larger than the book is killed"),
    pytest.param(buy("t", 11, 101, time_in_force=FOK), [
        "accepted #7",
        "#7 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="FOK is killed when its price limit leaves too little"),
    pytest.param(buy("t", 1, 100, time_in_force=FOK), [
        "accepted #7",
        "#7 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="FOK that does not cross is killed"),
    pytest.param(sell("t", 10, 99, time_in_force=FOK), [
        "accepted #7",
        "trade 5 @ 99 maker #4 taker #7",
        "#4 filled filled 5 left 0",
        "trade 5 @ 99 maker #5 taker #7",
        "#5 filled filled 5 left 0",
        "level buy 99: 0 lots in 0",
        "#7 filled filled 10 left 0",
    ], id="FOK sell filled exactly at its limit"),
    pytest.param(buy("t", 3, 100, post_only=True), [
        "accepted #7",
        "level buy 100: 3 lots in 1",
    ], id="post-only that does not cross rests"),
    pytest.param(buy("t", 3, 101, post_only=True), [
        "accepted #7",
        "#7 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ], id="post-only that would cross is canceled"),
    pytest.param(sell("t", 3, 99, post_only=True), [
        "accepted #7",
        "#7 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ], id="post-only sell that would cross is canceled"),
]


@pytest.mark.parametrize(("step", "expected"), LIMIT_ORDERS)
def test_limit_orders(step: Step, expected: list[str]) -> None:
    assert Book(steps=BOOK).log(step) == expected


MARKET_ORDERS = [
    pytest.param(market_buy("t", 12), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 2 @ 102 maker #3 taker #7",
        "#3 partiallyFilled filled 2 left 3",
        "level sell 102: 3 lots in 1",
        "#7 filled filled 12 left 0",
    ], id="market buy sweeps levels in price-time order"),
    pytest.param(market_buy("t", 20), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 5 @ 102 maker #3 taker #7",
        "#3 filled filled 5 left 0",
        "level sell 102: 0 lots in 0",
        "#7 canceled filled 15 left 0 MARKET_REMAINDER",
    ], id="market GTC behaves as IOC: the remainder is canceled"),
    pytest.param(market_buy("t", 7, time_in_force=IOC), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 2 @ 101 maker #2 taker #7",
        "#2 partiallyFilled filled 2 left 3",
        "level sell 101: 3 lots in 1",
        "#7 filled filled 7 left 0",
    ], id="market IOC filled completely"),
    pytest.param(market_buy("t", 16, time_in_force=FOK), [
        "accepted #7",
        "#7 canceled filled 0 left 0 FOK_UNFILLED",
    ], id="market FOK larger than the book is killed"),
    pytest.param(market_buy("t", 15, time_in_force=FOK), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 5 @ 102 maker #3 taker #7",
        "#3 filled filled 5 left 0",
        "level sell 102: 0 lots in 0",
        "#7 filled filled 15 left 0",
    ], id="market FOK that fits the book fills"),
    pytest.param(market_sell("t", 12), [
        "accepted #7",
        "trade 5 @ 99 maker #4 taker #7",
        "#4 filled filled 5 left 0",
        "trade 5 @ 99 maker #5 taker #7",
        "#5 filled filled 5 left 0",
        "level buy 99: 0 lots in 0",
        "trade 2 @ 98 maker #6 taker #7",
        "#6 partiallyFilled filled 2 left 3",
        "level buy 98: 3 lots in 1",
        "#7 filled filled 12 left 0",
    ], id="market sell sweeps the bids"),
    pytest.param(market_buy("t", quote_amount=5 * 101 + 5 * 101 + 2 * 102), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 2 @ 102 maker #3 taker #7",
        "#3 partiallyFilled filled 2 left 3",
        "level sell 102: 3 lots in 1",
        "#7 filled filled 12 left 0",
    ], id="market buy by quote amount across levels spends it exactly"),
    pytest.param(market_buy("t", quote_amount=1250, time_in_force=IOC), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 2 @ 102 maker #3 taker #7",
        "#3 partiallyFilled filled 2 left 3",
        "level sell 102: 3 lots in 1",
        "#7 canceled filled 12 left 0 MARKET_REMAINDER",
    ], id="market buy by quote amount leaves what buys no whole lot"),
    pytest.param(market_buy("t", quote_amount=10_000), [
        "accepted #7",
        "trade 5 @ 101 maker #1 taker #7",
        "#1 filled filled 5 left 0",
        "trade 5 @ 101 maker #2 taker #7",
        "#2 filled filled 5 left 0",
        "level sell 101: 0 lots in 0",
        "trade 5 @ 102 maker #3 taker #7",
        "#3 filled filled 5 left 0",
        "level sell 102: 0 lots in 0",
        "#7 canceled filled 15 left 0 MARKET_REMAINDER",
    ], id="market buy by quote amount larger than the book"),
    pytest.param(market_buy("t", quote_amount=100), [
        "accepted #7",
        "#7 canceled filled 0 left 0 MARKET_REMAINDER",
    ], id="market buy by quote amount below one lot buys nothing"),
]


@pytest.mark.parametrize(("step", "expected"), MARKET_ORDERS)
def test_market_orders(step: Step, expected: list[str]) -> None:
    assert Book(steps=BOOK).log(step) == expected


@pytest.mark.parametrize("step", [market_buy("t", 3), market_buy("t", quote_amount=500)])
def test_market_buy_on_an_empty_side_is_canceled(step: Step) -> None:
    book = Book(steps=BIDS)
    assert book.log(step) == ["accepted #4", "#4 canceled filled 0 left 0 MARKET_REMAINDER"]
    assert book.queue() == ([1, 2, 3], [])


def test_market_order_accepted_event_carries_its_terms() -> None:
    book = Book(steps=ASKS)
    accepted = book.do(market_buy("t", quote_amount=300, client_order_id="q1"))[0]
    assert accepted == OrderAccepted(
        order_id=4, account="t", client_order_id="q1", side=BUY, order_type=OrderType.MARKET,
        price=0, quantity=0, quote_amount=300, time_in_force=GTC, post_only=False,
        stp=EXPIRE_MAKER,
    )


def test_killed_and_canceled_takers_leave_the_book_as_it_was() -> None:
    book = Book(steps=BOOK)
    before = book.depth(), book.queue(), book.engine.next_trade_id
    book.run([buy("t", 16, 102, time_in_force=FOK), buy("t", 3, 101, post_only=True),
              buy("t", 1, 100, time_in_force=IOC)])
    assert (book.depth(), book.queue(), book.engine.next_trade_id) == before


# -- price band and minimum notional ----------------------------------------------------

BANDED = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", price_band="10",
                    reference_price="100")
"""Limit prices within 10 % of the reference: 90..110 until a trade moves it."""

PRICE_BAND = [
    pytest.param([], buy("a", 1, 110), "accepted #1", id="buy at the upper edge"),
    pytest.param([], buy("a", 1, 111), "rejected OUTSIDE_PRICE_BAND", id="buy above the band"),
    pytest.param([], sell("a", 1, 90), "accepted #1", id="sell at the lower edge"),
    pytest.param([], sell("a", 1, 89), "rejected OUTSIDE_PRICE_BAND", id="sell below the band"),
    pytest.param([], sell("a", 1, 111), "rejected OUTSIDE_PRICE_BAND",
                 id="the band applies to both sides alike"),
    pytest.param([sell("a", 1, 110), buy("b", 1, 110)], buy("c", 1, 121), "accepted #3",
                 id="the last trade price becomes the reference"),
    pytest.param([sell("a", 1, 110), buy("b", 1, 110)], buy("c", 1, 122),
                 "rejected OUTSIDE_PRICE_BAND", id="the band moves with the last trade"),
    pytest.param([sell("a", 1, 110), buy("b", 1, 110)], sell("c", 1, 98),
                 "rejected OUTSIDE_PRICE_BAND", id="the old reference no longer counts"),
]


@pytest.mark.parametrize(("setup", "step", "first_event"), PRICE_BAND)
def test_price_band_on_limit_orders(setup: list[Step], step: Step, first_event: str) -> None:
    assert Book(BANDED, setup).log(step)[0] == first_event


def test_no_band_until_there_is_a_reference_price() -> None:
    spec = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", price_band="10")
    book = Book(spec, [sell("a", 1, 1_000), buy("b", 1, 1_000)])
    assert book.engine.reference_price == 1_000
    assert book.log(buy("c", 1, 5))[0] == "rejected OUTSIDE_PRICE_BAND"
    assert book.log(buy("c", 1, 900))[0] == "accepted #3"


def test_market_buy_stops_at_the_band_edge() -> None:
    # Move the reference to 110, rest asks at 108 and 120, then bring the reference back
    # to 100: the band's edge is 110, so the ask at 120 is out of a market buy's reach.
    book = Book(BANDED, [sell("a", 1, 110), buy("b", 1, 110), sell("a", 5, 108),
                         sell("a", 5, 120), buy("b", 1, 100), sell("c", 1, 100)])
    assert book.engine.reference_price == 100
    assert book.log(market_buy("t", 10)) == [
        "accepted #7",
        "trade 5 @ 108 maker #3 taker #7",
        "#3 filled filled 5 left 0",
        "level sell 108: 0 lots in 0",
        "#7 canceled filled 5 left 0 MARKET_REMAINDER",
    ]
    assert book.depth()[1] == [(120, 5, 1)]


def test_market_sell_stops_at_the_band_edge() -> None:
    # Reference 91 lets bids rest at 85 and 95; a trade at 100 then puts the edge at 90.
    book = Book(BANDED, [sell("a", 1, 91), buy("b", 1, 91), buy("b", 5, 85), buy("b", 5, 95),
                         sell("c", 1, 100), buy("d", 1, 100)])
    assert book.engine.reference_price == 100
    assert book.log(market_sell("t", 10)) == [
        "accepted #7",
        "trade 5 @ 95 maker #4 taker #7",
        "#4 filled filled 5 left 0",
        "level buy 95: 0 lots in 0",
        "#7 canceled filled 5 left 0 MARKET_REMAINDER",
    ]
    assert book.depth()[0] == [(85, 5, 1)]


MIN_NOTIONAL_SPEC = MarketSpec(base="BTC", quote="USD", tick_size="0.5", lot_size="0.1",
                               min_notional="10")
"""One tick × lot unit is 0.05 quote, so the minimum notional is 200 units."""

MIN_NOTIONAL = [
    pytest.param(buy("a", 10, 20), "accepted #1", id="limit exactly at the minimum"),
    pytest.param(buy("a", 1, 199), "rejected BELOW_MIN_NOTIONAL", id="limit one unit below"),
    pytest.param(sell("a", 9, 22), "rejected BELOW_MIN_NOTIONAL", id="limit sell below"),
    pytest.param(market_buy("a", quote_amount=200), "accepted #1",
                 id="quote amount exactly at the minimum"),
    pytest.param(market_buy("a", quote_amount=199), "rejected BELOW_MIN_NOTIONAL",
                 id="quote amount below the minimum"),
    pytest.param(market_buy("a", 1), "accepted #1",
                 id="market by quantity has no price to check"),
]


@pytest.mark.parametrize(("step", "first_event"), MIN_NOTIONAL)
def test_min_notional(step: Step, first_event: str) -> None:
    assert Book(MIN_NOTIONAL_SPEC).log(step)[0] == first_event


# -- client order ids -----------------------------------------------------------------

CLIENT_ORDER_IDS = [
    pytest.param([buy("a", 1, 90, client_order_id="x")], buy("a", 1, 91, client_order_id="x"),
                 "rejected DUPLICATE_CLIENT_ORDER_ID", id="duplicate while the first is open"),
    pytest.param([buy("a", 1, 90, client_order_id="x")], sell("a", 1, 95, client_order_id="x"),
                 "rejected DUPLICATE_CLIENT_ORDER_ID", id="duplicate on the other side"),
    pytest.param([buy("a", 1, 90, client_order_id="x")],
                 market_sell("a", 1, client_order_id="x"),
                 "rejected DUPLICATE_CLIENT_ORDER_ID", id="duplicate market order"),
    pytest.param([buy("a", 1, 90, client_order_id="x")], buy("b", 1, 91, client_order_id="x"),
                 "accepted #2", id="another account may use the same id"),
    pytest.param([buy("a", 1, 90), buy("a", 1, 90)], buy("a", 1, 90), "accepted #3",
                 id="no client order id is never a duplicate"),
    pytest.param([buy("a", 1, 90, client_order_id="x"), sell("b", 1, 90)],
                 buy("a", 1, 91, client_order_id="x"), "accepted #3",
                 id="reuse after the first was filled"),
    pytest.param([buy("a", 1, 90, client_order_id="x"), cancel("a", 1)],
                 buy("a", 1, 91, client_order_id="x"), "accepted #2",
                 id="reuse after the first was canceled"),
    pytest.param([buy("a", 1, 90, client_order_id="x", time_in_force=IOC)],
                 buy("a", 1, 91, client_order_id="x"), "accepted #2",
                 id="reuse after an IOC that never rested"),
    pytest.param([buy("a", 1, 90, client_order_id="x"), cancel_all("a")],
                 buy("a", 1, 91, client_order_id="x"), "accepted #2",
                 id="reuse after cancel-all"),
]


@pytest.mark.parametrize(("setup", "step", "first_event"), CLIENT_ORDER_IDS)
def test_client_order_ids(setup: list[Step], step: Step, first_event: str) -> None:
    assert Book(steps=setup).log(step)[0] == first_event


def test_duplicate_client_order_id_reject_names_it() -> None:
    book = Book(steps=[buy("a", 1, 90, client_order_id="x")])
    [event] = book.do(buy("a", 1, 91, client_order_id="x"))
    assert isinstance(event, OrderRejected)
    assert (event.account, event.client_order_id, event.order_id, event.code) == (
        "a", "x", 0, RejectCode.DUPLICATE_CLIENT_ORDER_ID)


# -- cancel and cancel-all --------------------------------------------------------------

CANCELS = [
    pytest.param([], cancel("b1", 4), [
        "#4 canceled filled 0 left 0 USER",
        "level buy 99: 5 lots in 1",
    ], id="by order id"),
    pytest.param([], cancel("s3", 3), [
        "#3 canceled filled 0 left 0 USER",
        "level sell 102: 0 lots in 0",
    ], id="the last order of a level removes the level"),
    pytest.param([buy("x", 12, 101, client_order_id="c")], cancel("x", client_order_id="c"), [
        "#7 canceled filled 10 left 0 USER",
        "level buy 101: 0 lots in 0",
    ], id="by client order id, after fills"),
    pytest.param([sell("x", 3, 99)], cancel("b1", 4), [
        "#4 canceled filled 3 left 0 USER",
        "level buy 99: 5 lots in 1",
    ], id="a partially filled order reports its fills"),
    pytest.param([], cancel("b2", 4), ["rejected UNKNOWN_ORDER"],
                 id="another account's order is unknown"),
    pytest.param([], cancel("b1", 99), ["rejected UNKNOWN_ORDER"], id="an id never used"),
    pytest.param([buy("t", 5, 101)], cancel("s1", 1), ["rejected UNKNOWN_ORDER"],
                 id="a filled order is no longer open"),
    pytest.param([cancel("b1", 4)], cancel("b1", 4), ["rejected UNKNOWN_ORDER"],
                 id="canceling twice"),
    pytest.param([], cancel("b1", client_order_id="nope"), ["rejected UNKNOWN_ORDER"],
                 id="an unknown client order id"),
    pytest.param([], cancel("b1"), ["rejected UNKNOWN_ORDER"], id="naming no order at all"),
    pytest.param([buy("x", 1, 90, client_order_id="c")], cancel("x", 7, client_order_id="d"),
                 ["rejected UNKNOWN_ORDER"], id="order id and client order id disagree"),
]


@pytest.mark.parametrize(("setup", "step", "expected"), CANCELS)
def test_cancel(setup: list[Step], step: Step, expected: list[str]) -> None:
    assert Book(steps=BOOK + setup).log(step) == expected


# Account "m" owns #1 (sell 101), #2 (buy 99), #3 (sell 102) and #5 (buy 98); "o" owns #4.
MIXED: list[Step] = [sell("m", 1, 101), buy("m", 2, 99), sell("m", 3, 102), buy("o", 4, 99),
                     buy("m", 5, 98)]

CANCEL_ALLS = [
    pytest.param(cancel_all("m"), [
        "#1 canceled filled 0 left 0 USER",
        "#2 canceled filled 0 left 0 USER",
        "#3 canceled filled 0 left 0 USER",
        "#5 canceled filled 0 left 0 USER",
        "level buy 98: 0 lots in 0",
        "level buy 99: 4 lots in 1",
        "level sell 101: 0 lots in 0",
        "level sell 102: 0 lots in 0",
    ], id="one account, both sides"),
    pytest.param(cancel_all("m", BUY), [
        "#2 canceled filled 0 left 0 USER",
        "#5 canceled filled 0 left 0 USER",
        "level buy 98: 0 lots in 0",
        "level buy 99: 4 lots in 1",
    ], id="one account, bids only"),
    pytest.param(cancel_all("m", SELL), [
        "#1 canceled filled 0 left 0 USER",
        "#3 canceled filled 0 left 0 USER",
        "level sell 101: 0 lots in 0",
        "level sell 102: 0 lots in 0",
    ], id="one account, asks only"),
    pytest.param(cancel_all(), [
        "#1 canceled filled 0 left 0 ADMIN",
        "#2 canceled filled 0 left 0 ADMIN",
        "#3 canceled filled 0 left 0 ADMIN",
        "#4 canceled filled 0 left 0 ADMIN",
        "#5 canceled filled 0 left 0 ADMIN",
        "level buy 98: 0 lots in 0",
        "level buy 99: 0 lots in 0",
        "level sell 101: 0 lots in 0",
        "level sell 102: 0 lots in 0",
    ], id="admin: every account"),
    pytest.param(cancel_all(None, SELL), [
        "#1 canceled filled 0 left 0 ADMIN",
        "#3 canceled filled 0 left 0 ADMIN",
        "level sell 101: 0 lots in 0",
        "level sell 102: 0 lots in 0",
    ], id="admin: one side"),
    pytest.param(cancel_all("nobody"), [], id="an account without orders: nothing happens"),
    pytest.param(cancel_all("o", SELL), [], id="an account without orders on that side"),
]


@pytest.mark.parametrize(("step", "expected"), CANCEL_ALLS)
def test_cancel_all(step: Step, expected: list[str]) -> None:
    assert Book(steps=MIXED).log(step) == expected


def test_cancel_all_leaves_other_accounts_in_priority_order() -> None:
    book = Book(steps=[*MIXED, buy("o", 1, 99)])
    book.do(cancel_all("m"))
    assert book.queue() == ([4, 6], [])
    assert book.depth() == ([(99, 5, 2)], [])


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
        "a", "", 0, RejectCode.INVALID_QUANTITY, "quantity must be 1 lot or more")
    [event] = engine.apply(buy("a", 1, 90)(1, 0))
    assert isinstance(event, OrderRejected)
    assert event.code is RejectCode.SEQUENCE_OUT_OF_ORDER


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
                       sell("x", 1, 98)])
    data = book.engine.snapshot()
    restored = Engine.restore(data)
    assert restored.snapshot() == data
    assert restored.state_hash() == book.engine.state_hash()
    assert restored.l3() == book.engine.l3()
    follow_up = [cancel("s1", client_order_id=""), cancel("s1", 1), market_sell("y", 9),
                 buy("z", 20, 102), buy("s1", 1, 90, client_order_id="c")]
    for step in follow_up:
        book.sequence += 1
        command = step(book.sequence, 0)
        assert restored.apply(command) == book.engine.apply(command)
    assert restored.state_hash() == book.engine.state_hash()


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
