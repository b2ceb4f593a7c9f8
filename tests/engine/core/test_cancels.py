"""Client order ids, cancels and cancel-alls, as order-book scenario tables.

Rows start from ``helpers.BOOK`` (asks #1-#3, bids #4-#6) or a book of their own and
list the exact events a command must produce, in the notation of ``helpers.describe``.
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import (
    BOOK,
    BUY,
    IOC,
    SELL,
    Book,
    Step,
    buy,
    cancel,
    cancel_all,
    market_sell,
    sell,
)
from tradeplane_engine.core import OrderRejected, RejectCode

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
