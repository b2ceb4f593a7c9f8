"""Every rejection the engine can return: one table, one row per way to get each code.

A rejection is one ``OrderRejected`` event that echoes the command's account, client
order id, order id and type, and it changes nothing in the book. The table must name every
``RejectCode`` except those only the decimal conversion at the edge raises (those are
in ``test_market.py``); a test below holds it to that.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from tests.engine.core.helpers import (
    BUY,
    CONVERSION_ONLY_CODES,
    FOK,
    IOC,
    LEDGER_CODES,
    SPEC,
    Book,
    Step,
    buy,
    cancel,
    cancel_all,
    market_buy,
    market_sell,
    place,
    replace,
    sell,
    set_mode,
    stale,
)
from tradeplane_engine.core import (
    MAX_UNITS,
    MarketSpec,
    OffGrid,
    OrderRejected,
    OrderType,
    Place,
    RejectCode,
)
from tradeplane_engine.core.market import TradingMode

MARKET = OrderType.MARKET
MIN_100 = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", min_notional="100")
BANDED = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", price_band="10",
                    reference_price="100")
RESTING: tuple[Step, ...] = (buy("a", 5, 99, client_order_id="x"), sell("b", 5, 101))
"""#1 is "a"'s bid (client order id "x"), #2 is "b"'s ask."""


class Reject(NamedTuple):
    why: str
    step: Step
    code: RejectCode
    setup: tuple[Step, ...] = RESTING
    spec: MarketSpec = SPEC


def _in(mode: TradingMode) -> tuple[Step, ...]:
    return (*RESTING, set_mode(mode))


HALTED = _in(TradingMode.HALTED)
CANCEL_ONLY = _in(TradingMode.CANCEL_ONLY)
POST_ONLY = _in(TradingMode.POST_ONLY)

REJECTS = [
    Reject("halted: place", buy("a", 1, 98), RejectCode.MARKET_HALTED, HALTED),
    Reject("halted: market order", market_buy("a", 1), RejectCode.MARKET_HALTED, HALTED),
    Reject("halted: cancel", cancel("a", 1), RejectCode.MARKET_HALTED, HALTED),
    Reject("halted: replace", replace("a", 1, quantity=2), RejectCode.MARKET_HALTED, HALTED),
    Reject("halted: account cancel-all", cancel_all("a"), RejectCode.MARKET_HALTED, HALTED),
    Reject("cancelOnly: place", sell("a", 1, 105), RejectCode.MARKET_CANCEL_ONLY, CANCEL_ONLY),
    Reject("cancelOnly: replace", replace("a", 1, quantity=2), RejectCode.MARKET_CANCEL_ONLY,
           CANCEL_ONLY),
    Reject("postOnly: IOC", buy("a", 1, 98, time_in_force=IOC), RejectCode.MARKET_POST_ONLY,
           POST_ONLY),
    Reject("postOnly: FOK", buy("a", 1, 98, time_in_force=FOK), RejectCode.MARKET_POST_ONLY,
           POST_ONLY),
    Reject("postOnly: market", market_sell("a", 1), RejectCode.MARKET_POST_ONLY, POST_ONLY),

    Reject("limit quantity 0", buy("a", 0, 98), RejectCode.INVALID_QUANTITY),
    Reject("limit quantity negative", sell("a", -3, 105), RejectCode.INVALID_QUANTITY),
    Reject("limit quantity above the maximum", buy("a", MAX_UNITS + 1, 1),
           RejectCode.INVALID_QUANTITY),
    Reject("market quantity 0", market_sell("a", 0), RejectCode.INVALID_QUANTITY),
    Reject("market quantity above the maximum", market_buy("a", MAX_UNITS + 1),
           RejectCode.INVALID_QUANTITY),
    Reject("quote amount negative", market_buy("a", quote_amount=-100),
           RejectCode.INVALID_QUANTITY),
    Reject("quote amount above the maximum", market_buy("a", quote_amount=MAX_UNITS + 1),
           RejectCode.INVALID_QUANTITY),
    Reject("quote amount far above the maximum", market_buy("a", quote_amount=MAX_UNITS**2),
           RejectCode.INVALID_QUANTITY),
    Reject("replace quantity negative", replace("a", 1, quantity=-1),
           RejectCode.INVALID_QUANTITY),

    Reject("limit price 0", buy("a", 1, 0), RejectCode.INVALID_PRICE),
    Reject("limit price negative", sell("a", 1, -101), RejectCode.INVALID_PRICE),
    Reject("limit price above the maximum", sell("a", 1, MAX_UNITS + 1),
           RejectCode.INVALID_PRICE),
    Reject("market order with a price", place("a", BUY, 1, 101, order_type=MARKET),
           RejectCode.INVALID_PRICE),
    Reject("replace price negative", replace("a", 1, price=-99), RejectCode.INVALID_PRICE),
    Reject("replace price above the maximum", replace("a", 1, price=MAX_UNITS + 1),
           RejectCode.INVALID_PRICE),

    Reject("limit below min notional", buy("a", 1, 99), RejectCode.BELOW_MIN_NOTIONAL,
           (), MIN_100),
    Reject("quote amount below min notional", market_buy("a", quote_amount=99),
           RejectCode.BELOW_MIN_NOTIONAL, (), MIN_100),
    Reject("replace below min notional", replace("a", 1, price=9),
           RejectCode.BELOW_MIN_NOTIONAL, (buy("a", 10, 10),), MIN_100),

    Reject("limit buy above the band", buy("a", 1, 111), RejectCode.OUTSIDE_PRICE_BAND,
           (), BANDED),
    Reject("limit sell below the band", sell("a", 1, 89), RejectCode.OUTSIDE_PRICE_BAND,
           (), BANDED),
    Reject("replace outside the band", replace("a", 1, price=89),
           RejectCode.OUTSIDE_PRICE_BAND, RESTING, BANDED),

    Reject("client order id still open", sell("a", 1, 105, client_order_id="x"),
           RejectCode.DUPLICATE_CLIENT_ORDER_ID),

    Reject("post-only IOC", buy("a", 1, 98, time_in_force=IOC, post_only=True),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("post-only FOK", buy("a", 1, 98, time_in_force=FOK, post_only=True),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("limit with a quote amount", buy("a", 1, 98, quote_amount=98),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("post-only market order", market_buy("a", 1, post_only=True),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("quote amount and quantity", market_buy("a", 1, quote_amount=500),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("market sell by quote amount", market_sell("a", 0, quote_amount=500),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("market FOK by quote amount", market_buy("a", quote_amount=500, time_in_force=FOK),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("limit without an account", buy("", 1, 98), RejectCode.INVALID_ORDER_PARAMS),
    Reject("market order without an account", market_buy("", 1),
           RejectCode.INVALID_ORDER_PARAMS),

    Reject("replace to the filled quantity", replace("b", 2, quantity=3),
           RejectCode.REPLACE_QUANTITY_TOO_LOW, (*RESTING, buy("c", 3, 101))),
    Reject("replace below the filled quantity", replace("b", 2, quantity=1),
           RejectCode.REPLACE_QUANTITY_TOO_LOW, (*RESTING, buy("c", 3, 101))),

    Reject("cancel an unknown id", cancel("a", 42), RejectCode.UNKNOWN_ORDER),
    Reject("cancel another account's order", cancel("b", 1), RejectCode.UNKNOWN_ORDER),
    Reject("cancel another account's client order id", cancel("b", client_order_id="x"),
           RejectCode.UNKNOWN_ORDER),
    Reject("cancel without an account", cancel("", 1), RejectCode.UNKNOWN_ORDER),
    Reject("replace another account's order", replace("b", 1, quantity=2),
           RejectCode.UNKNOWN_ORDER),

    Reject("replayed place", stale(buy("a", 1, 98)), RejectCode.SEQUENCE_OUT_OF_ORDER),
    Reject("older place", stale(buy("a", 1, 98), behind=2), RejectCode.SEQUENCE_OUT_OF_ORDER),
    Reject("replayed cancel", stale(cancel("a", 1)), RejectCode.SEQUENCE_OUT_OF_ORDER),
    Reject("replayed replace", stale(replace("a", 1, quantity=2)),
           RejectCode.SEQUENCE_OUT_OF_ORDER),
    Reject("replayed cancel-all", stale(cancel_all()), RejectCode.SEQUENCE_OUT_OF_ORDER),
    Reject("replayed mode change", stale(set_mode(TradingMode.HALTED)),
           RejectCode.SEQUENCE_OUT_OF_ORDER),
]


MIN_100_BANDED = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1",
                            min_notional="100", price_band="10", reference_price="100")

FIRST_CHECK_WINS = [
    # A command that fails several checks gets the code of the first, in this order
    # (docs/engine.md): sequence, trading mode, the named order (cancel, replace), price,
    # quantity (or quote amount), combination, new total (replace), minimum notional,
    # price band, account, client order id.
    Reject("stale and halted", stale(buy("a", 0, 0)), RejectCode.SEQUENCE_OUT_OF_ORDER,
           HALTED),
    Reject("halted, no price and no quantity", buy("a", 0, 0), RejectCode.MARKET_HALTED,
           HALTED),
    Reject("postOnly and a market order with a price", place("a", BUY, 1, 5, order_type=MARKET),
           RejectCode.MARKET_POST_ONLY, POST_ONLY),
    Reject("no price and no quantity", buy("a", 0, 0), RejectCode.INVALID_PRICE),
    Reject("no quantity and post-only IOC", buy("a", 0, 100, time_in_force=IOC, post_only=True),
           RejectCode.INVALID_QUANTITY),
    Reject("post-only IOC and below min notional",
           buy("a", 1, 50, time_in_force=IOC, post_only=True), RejectCode.INVALID_ORDER_PARAMS,
           (), MIN_100_BANDED),
    Reject("below min notional and outside the band", buy("a", 1, 50),
           RejectCode.BELOW_MIN_NOTIONAL, (), MIN_100_BANDED),
    Reject("outside the band and no account", buy("", 1, 200), RejectCode.OUTSIDE_PRICE_BAND,
           (), MIN_100_BANDED),
    Reject("no account and a client order id in use", buy("", 1, 98, client_order_id="x"),
           RejectCode.INVALID_ORDER_PARAMS),
    Reject("replace: unknown order and no price", replace("b", 1, price=-1, quantity=-1),
           RejectCode.UNKNOWN_ORDER),
    Reject("replace: bad price and bad quantity", replace("a", 1, price=-1, quantity=-1),
           RejectCode.INVALID_PRICE),
    Reject("replace: total too low and below min notional", replace("b", 2, quantity=3, price=1),
           RejectCode.REPLACE_QUANTITY_TOO_LOW, (*RESTING, buy("c", 3, 101)), MIN_100),
    Reject("replace: below min notional and outside the band", replace("a", 1, price=80),
           RejectCode.BELOW_MIN_NOTIONAL, (buy("a", 1, 100),), MIN_100_BANDED),
]


@pytest.mark.parametrize("row", [pytest.param(row, id=f"{row.code.name}: {row.why}")
                                 for row in (*REJECTS, *FIRST_CHECK_WINS)])
def test_reject(row: Reject) -> None:
    book = Book(row.spec, row.setup)
    engine = book.engine
    before = (engine.l3().bids, engine.l3().asks, engine.next_order_id, engine.next_trade_id,
              engine.reference_price, engine.mode)
    command = row.step(book.sequence + 1, 0)
    events = book.do(row.step)
    assert len(events) == 1
    [event] = events
    assert isinstance(event, OrderRejected)
    assert event.code is row.code
    assert event.reason
    assert event.account == (getattr(command, "account", None) or "")
    assert event.client_order_id == getattr(command, "client_order_id", "")
    assert event.order_id == getattr(command, "order_id", 0)
    assert event.command == type(command).__struct_config__.tag
    assert event.new_order is isinstance(command, Place)
    assert (engine.l3().bids, engine.l3().asks, engine.next_order_id, engine.next_trade_id,
            engine.reference_price, engine.mode) == before


def test_every_engine_reject_code_is_in_the_table() -> None:
    assert {row.code for row in REJECTS} == set(RejectCode) - CONVERSION_ONLY_CODES - LEDGER_CODES


def test_codes_are_stable_numbers() -> None:
    assert {code.name: int(code) for code in RejectCode} == {
        "MARKET_HALTED": 101, "MARKET_CANCEL_ONLY": 102, "MARKET_POST_ONLY": 103,
        "INVALID_QUANTITY": 201, "INVALID_PRICE": 202, "PRICE_NOT_ON_TICK": 203,
        "QUANTITY_NOT_ON_LOT": 204, "BELOW_MIN_NOTIONAL": 205, "OUTSIDE_PRICE_BAND": 206,
        "DUPLICATE_CLIENT_ORDER_ID": 207, "INVALID_ORDER_PARAMS": 208,
        "REPLACE_QUANTITY_TOO_LOW": 209, "UNKNOWN_ORDER": 301, "SEQUENCE_OUT_OF_ORDER": 401,
        "INSUFFICIENT_FUNDS": 501, "QUOTE_AMOUNT_REQUIRED": 502, "NOT_FUNDED": 503,
        "TRANSFER_ID_REUSED": 504, "INVALID_AMOUNT": 505,
    }


def test_a_rejected_order_uses_up_no_order_id() -> None:
    book = Book(steps=[buy("a", 0, 98), buy("", 1, 98), sell("a", 1, -1)])
    assert book.log(buy("a", 1, 98)) == ["accepted #1", "level buy 98: 1 lots in 1"]



@pytest.mark.parametrize("amount", [MAX_UNITS - 1, MAX_UNITS, MAX_UNITS + 1, MAX_UNITS * 2])
def test_the_core_and_the_edge_take_the_same_largest_quote_amount(amount: int) -> None:
    """Regression: the core took quote amounts up to (2^53 - 1)^2 units (and traded them),
    while the edge refuses any above 2^53 - 1; one maximum now holds in both."""
    try:
        SPEC.to_notional_units(str(amount))
        edge_accepts = True
    except OffGrid:
        edge_accepts = False
    events = Book(steps=[sell("b", 1, 100)]).do(market_buy("a", quote_amount=amount))
    core_accepts = not isinstance(events[0], OrderRejected)
    assert core_accepts is edge_accepts is (amount <= MAX_UNITS)


DECIMALS = MarketSpec(base="BTC", quote="USD", tick_size="0.01", lot_size="0.001")
LARGEST_PRICE = "90071992547409.91"
LARGEST_QUANTITY = "9007199254740.991"
LARGEST_QUOTE_AMOUNT = "90071992547.40991"

REASONS = [
    pytest.param(buy("a", 1, 0), "price must be 1 tick or more", id="price 0"),
    pytest.param(buy("a", 1, MAX_UNITS + 1),
                 f"price must be at most {LARGEST_PRICE} ({MAX_UNITS} ticks)",
                 id="price above the maximum"),
    pytest.param(buy("a", -2, 100), "quantity must be 1 lot or more",
                 id="quantity negative"),
    pytest.param(buy("a", MAX_UNITS + 1, 1),
                 f"quantity must be at most {LARGEST_QUANTITY} ({MAX_UNITS} lots)",
                 id="quantity above the maximum"),
    pytest.param(market_sell("a", MAX_UNITS + 1),
                 f"quantity must be at most {LARGEST_QUANTITY} ({MAX_UNITS} lots)",
                 id="market quantity above the maximum"),
    pytest.param(market_buy("a", quote_amount=-1), "quote amount must be positive",
                 id="quote amount negative"),
    pytest.param(market_buy("a", quote_amount=MAX_UNITS + 1),
                 f"quote amount must be at most {LARGEST_QUOTE_AMOUNT}",
                 id="quote amount above the maximum"),
    pytest.param(replace("a", 1, price=MAX_UNITS + 1),
                 f"price must be at most {LARGEST_PRICE} ({MAX_UNITS} ticks)",
                 id="replace price above the maximum"),
    pytest.param(replace("a", 1, quantity=MAX_UNITS + 1),
                 f"quantity must be at most {LARGEST_QUANTITY} ({MAX_UNITS} lots)",
                 id="replace quantity above the maximum"),
    pytest.param(replace("a", 1, quantity=-1), "quantity must be 1 lot or more",
                 id="replace quantity negative"),
]


@pytest.mark.parametrize(("step", "reason"), REASONS)
def test_a_value_out_of_range_is_refused_with_what_is_wrong(step: Step, reason: str) -> None:
    """Regression: a value above the maximum was refused as "must be 1 tick/lot or more"."""
    [event] = Book(DECIMALS, [buy("a", 1, 100)]).do(step)
    assert isinstance(event, OrderRejected)
    assert event.reason == reason
