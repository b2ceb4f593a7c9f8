"""Order-book scenarios for the matching engine, written as tables.

Each row starts from a small book, applies one command and lists the exact events it
must produce, in the notation of ``helpers.describe``. The tables cover limit orders
(GTC, IOC, FOK, post-only), market orders (by quantity and by quote amount), the price
band and the minimum notional. Cancels, self-trade prevention, replace, trading modes,
rejections and the engine's state have their own files.
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import (
    ASKS,
    BIDS,
    BOOK,
    BUY,
    EXPIRE_MAKER,
    FOK,
    GTC,
    IOC,
    Book,
    Step,
    buy,
    cancel,
    market_buy,
    market_sell,
    replace,
    sell,
)
from tradeplane_engine.core import MarketSpec, OrderAccepted, OrderType, Trade

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


# -- deep queues ------------------------------------------------------------------------

@pytest.mark.parametrize("canceled", [
    pytest.param(range(1, 31), id="the front 30 canceled"),
    pytest.param(range(2, 61, 2), id="every other order canceled"),
    pytest.param(range(11, 41), id="the middle 30 canceled"),
    pytest.param(range(1, 60), id="all but the last canceled"),
])
def test_deep_queues_keep_time_priority_through_cancels(canceled: range) -> None:
    book = Book(steps=[sell(f"m{n}", 1, 100) for n in range(1, 61)])
    book.run([cancel(f"m{n}", n) for n in canceled])
    survivors = [n for n in range(1, 61) if n not in canceled]
    assert book.queue() == ([], survivors)
    assert book.depth() == ([], [(100, len(survivors), len(survivors))])
    events = book.do(buy("t", len(survivors), 100))
    assert [e.maker_order_id for e in events if isinstance(e, Trade)] == survivors
    assert book.depth() == ([], [])


def test_deep_queues_keep_time_priority_through_fills_and_replaces() -> None:
    book = Book(steps=[sell(f"m{n}", 2, 100) for n in range(1, 81)])
    book.do(buy("t", 99, 100))  # fills #1-#49 and 1 lot of #50
    book.run([replace("m52", 52, quantity=1), replace("m53", 53, quantity=3),
              cancel("m54", 54), sell("late", 2, 100)])
    bids, asks = book.queue()
    assert bids == []
    assert asks == [50, 51, 52, *range(55, 81), 53, 82]
    assert book.remaining()[50] == 1
    assert book.remaining()[52] == 1
    events = book.do(market_buy("t2", 1 + 2 + 1 + 2 * 26 + 3 + 2))
    assert [e.maker_order_id for e in events if isinstance(e, Trade)] == asks
    assert book.depth() == ([], [])
