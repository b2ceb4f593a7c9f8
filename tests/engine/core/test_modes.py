"""Trading-mode scenarios: what ``open``, ``postOnly``, ``cancelOnly`` and ``halted`` accept.

Every row starts from ask #1 (101) and bid #2 (99) of account "m", switches the market
to a mode and sends one command. ``postOnly`` takes only GTC limit orders and cancels
the ones that would cross (reason MODE); ``cancelOnly`` takes only cancels; ``halted``
takes nothing but admin commands.
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import (
    BUY,
    FOK,
    IOC,
    Book,
    Step,
    buy,
    cancel,
    cancel_all,
    market_buy,
    market_sell,
    replace,
    sell,
    set_mode,
)
from tradeplane_engine.core import MarketSpec, TradingModeChanged
from tradeplane_engine.core.market import TradingMode

OPEN = TradingMode.OPEN
POST_ONLY = TradingMode.POST_ONLY
CANCEL_ONLY = TradingMode.CANCEL_ONLY
HALTED = TradingMode.HALTED

SETUP: list[Step] = [sell("m", 5, 101), buy("m", 5, 99)]

MODES = [
    pytest.param(OPEN, buy("t", 1, 101), [
        "accepted #3",
        "trade 1 @ 101 maker #1 taker #3",
        "#1 partiallyFilled filled 1 left 4",
        "level sell 101: 4 lots in 1",
        "#3 filled filled 1 left 0",
    ], id="open: a crossing order trades"),
    pytest.param(OPEN, market_sell("t", 1, time_in_force=IOC), [
        "accepted #3",
        "trade 1 @ 99 maker #2 taker #3",
        "#2 partiallyFilled filled 1 left 4",
        "level buy 99: 4 lots in 1",
        "#3 filled filled 1 left 0",
    ], id="open: a market order trades"),

    pytest.param(POST_ONLY, buy("t", 2, 100), [
        "accepted #3",
        "level buy 100: 2 lots in 1",
    ], id="postOnly: a GTC limit that rests is taken"),
    pytest.param(POST_ONLY, buy("t", 2, 101), [
        "accepted #3",
        "#3 canceled filled 0 left 0 MODE",
    ], id="postOnly: a crossing GTC limit is canceled with reason MODE"),
    pytest.param(POST_ONLY, sell("t", 2, 90), [
        "accepted #3",
        "#3 canceled filled 0 left 0 MODE",
    ], id="postOnly: a crossing GTC sell is canceled with reason MODE"),
    pytest.param(POST_ONLY, buy("t", 2, 101, post_only=True), [
        "accepted #3",
        "#3 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ], id="postOnly: a crossing post-only order keeps its own reason"),
    pytest.param(POST_ONLY, buy("t", 2, 100, time_in_force=IOC), ["rejected MARKET_POST_ONLY"],
                 id="postOnly: IOC refused"),
    pytest.param(POST_ONLY, buy("t", 2, 100, time_in_force=FOK), ["rejected MARKET_POST_ONLY"],
                 id="postOnly: FOK refused"),
    pytest.param(POST_ONLY, market_buy("t", 2), ["rejected MARKET_POST_ONLY"],
                 id="postOnly: market order refused"),
    pytest.param(POST_ONLY, replace("m", 2, price=100), [
        "replaced #2 5 @ 100 left 5 priority lost",
        "level buy 99: 0 lots in 0",
        "level buy 100: 5 lots in 1",
    ], id="postOnly: a replace that rests is taken"),
    pytest.param(POST_ONLY, replace("m", 2, price=101), [
        "replaced #2 5 @ 101 left 5 priority lost",
        "level buy 99: 0 lots in 0",
        "#2 canceled filled 0 left 0 MODE",
    ], id="postOnly: a crossing replace is canceled with reason MODE"),
    pytest.param(POST_ONLY, cancel("m", 1), [
        "#1 canceled filled 0 left 0 USER",
        "level sell 101: 0 lots in 0",
    ], id="postOnly: cancel taken"),

    pytest.param(CANCEL_ONLY, buy("t", 2, 100), ["rejected MARKET_CANCEL_ONLY"],
                 id="cancelOnly: limit refused"),
    pytest.param(CANCEL_ONLY, market_buy("t", quote_amount=500),
                 ["rejected MARKET_CANCEL_ONLY"], id="cancelOnly: market refused"),
    pytest.param(CANCEL_ONLY, replace("m", 2, quantity=3), ["rejected MARKET_CANCEL_ONLY"],
                 id="cancelOnly: even a smaller replace refused"),
    pytest.param(CANCEL_ONLY, cancel("m", 2), [
        "#2 canceled filled 0 left 0 USER",
        "level buy 99: 0 lots in 0",
    ], id="cancelOnly: cancel taken"),
    pytest.param(CANCEL_ONLY, cancel_all("m", BUY), [
        "#2 canceled filled 0 left 0 USER",
        "level buy 99: 0 lots in 0",
    ], id="cancelOnly: cancel-all taken"),

    pytest.param(HALTED, buy("t", 2, 100), ["rejected MARKET_HALTED"], id="halted: place"),
    pytest.param(HALTED, market_sell("t", 2), ["rejected MARKET_HALTED"],
                 id="halted: market order"),
    pytest.param(HALTED, cancel("m", 1), ["rejected MARKET_HALTED"], id="halted: cancel"),
    pytest.param(HALTED, replace("m", 1, quantity=3), ["rejected MARKET_HALTED"],
                 id="halted: replace"),
    pytest.param(HALTED, cancel_all("m"), ["rejected MARKET_HALTED"],
                 id="halted: an account's cancel-all"),
    pytest.param(HALTED, cancel_all(), [
        "#1 canceled filled 0 left 0 ADMIN",
        "#2 canceled filled 0 left 0 ADMIN",
        "level buy 99: 0 lots in 0",
        "level sell 101: 0 lots in 0",
    ], id="halted: the admin cancel-all is taken"),
    pytest.param(HALTED, set_mode(OPEN), ["mode open from halted"],
                 id="halted: the admin mode change is taken"),
]


@pytest.mark.parametrize(("mode", "step", "expected"), MODES)
def test_trading_modes(mode: TradingMode, step: Step, expected: list[str]) -> None:
    book = Book(steps=[*SETUP, set_mode(mode)])
    assert book.log(step) == expected


@pytest.mark.parametrize("mode", [POST_ONLY, CANCEL_ONLY, HALTED])
def test_refusals_by_mode_change_nothing(mode: TradingMode) -> None:
    book = Book(steps=[*SETUP, set_mode(mode)])
    before = book.depth(), book.queue(), book.engine.next_order_id
    book.run([market_buy("t", 1), buy("t", 1, 100, time_in_force=IOC),
              replace("m", 1, price=102) if mode is not POST_ONLY else cancel("t", 1)])
    assert (book.depth(), book.queue(), book.engine.next_order_id) == before


def test_mode_change_event_and_a_halt_freezes_the_book() -> None:
    book = Book(steps=SETUP)
    assert book.do(set_mode(HALTED)) == [TradingModeChanged(mode=HALTED, previous=OPEN)]
    assert book.log(set_mode(HALTED)) == ["mode halted from halted"]
    frozen = book.depth(), book.queue()
    book.run([buy("t", 1, 101), cancel("m", 1), cancel_all("m")])
    assert (book.depth(), book.queue()) == frozen
    assert book.log(set_mode(CANCEL_ONLY)) == ["mode cancelOnly from halted"]
    assert book.log(set_mode(OPEN)) == ["mode open from cancelOnly"]
    assert book.log(buy("t", 1, 101))[:2] == ["accepted #3", "trade 1 @ 101 maker #1 taker #3"]


def test_the_market_starts_in_the_specs_mode() -> None:
    spec = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1",
                      trading_mode=CANCEL_ONLY)
    book = Book(spec)
    assert book.log(buy("t", 1, 100)) == ["rejected MARKET_CANCEL_ONLY"]
    assert book.log(set_mode(POST_ONLY)) == ["mode postOnly from cancelOnly"]


def test_the_mode_survives_a_snapshot() -> None:
    book = Book(steps=[*SETUP, set_mode(POST_ONLY)])
    restored = book.restored()
    assert restored.log(buy("t", 1, 101)) == book.log(buy("t", 1, 101)) == [
        "accepted #3", "#3 canceled filled 0 left 0 MODE"]


def test_in_post_only_mode_a_post_only_order_keeps_its_own_reason_on_replace_too() -> None:
    book = Book(steps=[*SETUP, buy("t", 5, 98, post_only=True), set_mode(POST_ONLY)])
    assert book.log(replace("t", 3, price=101)) == [
        "replaced #3 5 @ 101 left 5 priority lost",
        "level buy 98: 0 lots in 0",
        "#3 canceled filled 0 left 0 POST_ONLY_WOULD_CROSS",
    ]
