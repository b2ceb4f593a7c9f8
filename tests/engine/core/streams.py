"""Hypothesis strategies for the property tests: random but lively command streams.

The streams mix limit and market orders (every time in force, post-only, every STP
mode, a few client order ids), cancels, replaces, cancel-alls and the odd trading-mode
change, from three accounts at prices a few ticks around 100, so orders cross, self-
trade prevention triggers and many commands are refused.
"""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

from tradeplane_engine.core import (
    AnyCommand,
    Cancel,
    CancelAll,
    Engine,
    MarketSpec,
    OrderType,
    Place,
    Replace,
    SelfTradePrevention,
    SetTradingMode,
    Side,
    TimeInForce,
)
from tradeplane_engine.core.market import TradingMode

ACCOUNTS = ("a", "b", "c")
MID = 100
PLAIN = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1")
BANDED = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1", price_band="3",
                    reference_price=str(MID))
"""A 3 % band: 97..103 around 100, so some generated prices fall outside it."""

accounts = st.sampled_from(ACCOUNTS)
sides = st.sampled_from(Side)
prices = st.integers(MID - 4, MID + 4)
quantities = st.integers(1, 6)
stps = st.sampled_from(SelfTradePrevention)
client_order_ids = st.sampled_from(["", "", "", "x", "y"])
order_ids = st.integers(1, 8)

limit_orders = st.builds(
    Place, sequence=st.just(0), timestamp=st.just(0), account=accounts, side=sides,
    quantity=quantities, price=prices,
    time_in_force=st.sampled_from([TimeInForce.GTC] * 4 + [TimeInForce.IOC, TimeInForce.FOK]),
    post_only=st.sampled_from([False, False, False, True]), stp=stps,
    client_order_id=client_order_ids,
)
market_orders = st.one_of(
    st.builds(Place, sequence=st.just(0), timestamp=st.just(0), account=accounts, side=sides,
              quantity=st.integers(1, 12), order_type=st.just(OrderType.MARKET),
              time_in_force=st.sampled_from(TimeInForce), stp=stps),
    st.builds(Place, sequence=st.just(0), timestamp=st.just(0), account=accounts,
              side=st.just(Side.BUY), quote_amount=st.integers(50, 1_500),
              order_type=st.just(OrderType.MARKET),
              time_in_force=st.sampled_from([TimeInForce.GTC, TimeInForce.IOC]), stp=stps),
)
cancels = st.sampled_from([
    *[st.builds(Cancel, sequence=st.just(0), timestamp=st.just(0), account=accounts,
                order_id=order_ids)] * 3,
    st.builds(Cancel, sequence=st.just(0), timestamp=st.just(0), account=accounts,
              client_order_id=st.sampled_from(["x", "y"])),
]).flatmap(lambda s: s)
replaces = st.builds(
    Replace, sequence=st.just(0), timestamp=st.just(0), account=accounts, order_id=order_ids,
    price=st.one_of(st.just(0), prices), quantity=st.one_of(st.just(0), st.integers(1, 9)),
)
cancel_alls = st.builds(
    CancelAll, sequence=st.just(0), timestamp=st.just(0),
    account=st.one_of(accounts, st.none()), side=st.one_of(st.none(), sides),
)
mode_changes = st.builds(
    SetTradingMode, sequence=st.just(0), timestamp=st.just(0),
    mode=st.sampled_from([TradingMode.OPEN, TradingMode.POST_ONLY, TradingMode.POST_ONLY,
                          TradingMode.CANCEL_ONLY, TradingMode.HALTED]),
)
one_in_four = st.sampled_from([True, False, False, False])
one_in_six = st.sampled_from([True, False, False, False, False, False])
COMMAND_MIX: list[st.SearchStrategy[AnyCommand]] = [
    *[limit_orders] * 10, *[market_orders] * 2, *[cancels] * 2, *[replaces] * 3, cancel_alls,
]
"""Limit orders most of the time, so the book fills up."""
any_command: st.SearchStrategy[AnyCommand] = st.sampled_from(COMMAND_MIX).flatmap(lambda s: s)


@st.composite
def streams(draw: st.DrawFn) -> tuple[MarketSpec, list[AnyCommand]]:
    """A market and a stream of 20 to 60 sequenced commands for it.

    A scratch engine follows the stream as it is drawn, so that three cancels or
    replaces in four can name an order resting at that point, sent by its owner
    (otherwise nearly all would only test UNKNOWN_ORDER), and so that a market switched
    out of ``open`` (about one stream in two) is switched back after a few commands.
    The properties never trust the scratch engine: they check the engine under test.

    A stream ends early at a command after which the scratch book holds an empty level
    or an order with nothing left: properties (a) and (f) report that command, and
    matching against such a book may never end, so nothing is sent after it.
    """
    spec = draw(st.sampled_from([PLAIN, BANDED]), label="spec")
    scratch = Engine(spec)
    mode_change_at = draw(st.integers(1, 80), label="mode change at")
    commands: list[AnyCommand] = []
    for sequence in range(1, draw(st.integers(20, 60), label="length") + 1):
        if sequence == mode_change_at:
            command: AnyCommand = draw(mode_changes)
        elif scratch.mode is not TradingMode.OPEN and draw(one_in_six):
            command = SetTradingMode(0, 0, mode=TradingMode.OPEN)
        else:
            command = draw(any_command)
        if isinstance(command, Cancel | Replace) and command.order_id and not draw(one_in_four):
            book = scratch.l3()
            if book.bids or book.asks:
                target = draw(st.sampled_from([*book.bids, *book.asks]))
                command = msgspec.structs.replace(command, order_id=target.order_id,
                                                  account=target.account)
        command = msgspec.structs.replace(command, sequence=sequence, timestamp=sequence * 1_000)
        scratch.apply(command)
        commands.append(command)
        if not _sound(scratch):
            break
    return spec, commands


def _sound(engine: Engine) -> bool:
    """Whether every level and every resting order of the book holds something."""
    levels, orders = engine.l2(depth=1_000), engine.l3()
    return (all(level.quantity > 0 and level.order_count > 0
                for level in (*levels.bids, *levels.asks))
            and all(order.remaining > 0 for order in (*orders.bids, *orders.asks))
            and len(orders.bids) == sum(level.order_count for level in levels.bids)
            and len(orders.asks) == sum(level.order_count for level in levels.asks))
