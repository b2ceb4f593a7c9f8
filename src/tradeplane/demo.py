"""``tradeplane demo``: the matching engine on the standard workload, told plainly.

No NATS, no processes: the core alone, to see what matching does and how fast.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

from tradeplane_engine.core import (
    AnyCommand,
    AnyEvent,
    BookLevel,
    Cancel,
    Engine,
    OrderAccepted,
    OrderRejected,
    OrderType,
    OrderUpdate,
    Place,
    Side,
    Trade,
)
from tradeplane_engine.core.market import OffGrid
from tradeplane_engine.workload import SPEC, generate, to_commands


def walkthrough() -> list[tuple[str, AnyCommand]]:
    """A few orders a newcomer can follow, with decimal prices turned into ticks and lots."""
    ticks, lots = SPEC.to_ticks, SPEC.to_lots
    return [
        ("alice sells 2 SOL at 100.00", Place(1, 1, "alice", Side.SELL, lots("2"), ticks("100"))),
        ("carol sells 1 SOL at 100.05",
         Place(2, 2, "carol", Side.SELL, lots("1"), ticks("100.05"))),
        ("bob buys 2.5 SOL up to 100.10",
         Place(3, 3, "bob", Side.BUY, lots("2.5"), ticks("100.10"))),
        ("erin bids 1 SOL at 99.90", Place(4, 4, "erin", Side.BUY, lots("1"), ticks("99.90"))),
        ("dave sells 1.5 SOL at market",
         Place(5, 5, "dave", Side.SELL, lots("1.5"), order_type=OrderType.MARKET)),
        ("carol cancels the rest of her order #2", Cancel(6, 6, "carol", order_id=2)),
        ("carol cancels order #2 again", Cancel(7, 7, "carol", order_id=2)),
    ]


def describe(event: AnyEvent) -> str:
    if type(event) is OrderAccepted:
        return f"accepted as order #{event.order_id}"
    if type(event) is Trade:
        return (f"trade #{event.trade_id}: {SPEC.from_lots(event.quantity)} SOL at "
                f"{SPEC.from_ticks(event.price)} ({event.maker_account}'s #{event.maker_order_id}"
                f" was resting, {event.taker_account}'s #{event.taker_order_id} took it)")
    if type(event) is OrderUpdate:
        reason = f", reason {event.reason.name}" if event.reason else ""
        return (f"order #{event.order_id} {event.status.value}: filled "
                f"{SPEC.from_lots(event.filled_quantity)}, open "
                f"{SPEC.from_lots(event.remaining_quantity)}{reason}")
    if type(event) is BookLevel:
        return (f"book: {event.side.value} level {SPEC.from_ticks(event.price)} now holds "
                f"{SPEC.from_lots(event.quantity)} SOL in {event.order_count} order(s)")
    if type(event) is OrderRejected:
        return f"rejected, code {event.code.value} {event.code.name}: {event.reason}"
    return repr(event)


def run_demo(count: int, seed: int, depth: int, out: TextIO) -> None:
    out.write(f"tradeplane demo: one {SPEC.symbol} market, tick {SPEC.tick_size}, "
              f"lot {SPEC.lot_size}\n\n")
    _walk_through(out)
    engine = _run_workload(count, seed, out)
    _show_book(engine, depth, seed, out)


def _walk_through(out: TextIO) -> None:
    """A few orders, and every event each one produces."""
    say = out.write
    say("First, a few orders and every event each one produces:\n")
    engine = Engine(SPEC)
    for label, command in walkthrough():
        say(f"  {label}\n")
        for event in engine.apply(command):
            say(f"    -> {describe(event)}\n")
    say("  bob buys 0.123 SOL (off the 0.01 lot grid)\n")
    try:
        SPEC.to_lots("0.123")
    except OffGrid as error:
        say(f"    -> refused at the edge, code {error.code.value} {error.code.name}: "
            f"{error.reason}\n")


def _run_workload(count: int, seed: int, out: TextIO) -> Engine:
    """The standard benchmark workload on a fresh book, timed, and what it did."""
    say = out.write
    say("\nNow the standard benchmark workload on a fresh book.\n")
    say(f"generating the standard workload: {count:,} commands (seed {seed}) ...\n")
    commands = to_commands(generate(count, seed))
    kinds = Counter(type(command).__name__ for command in commands)
    say("  " + ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common()) + "\n")

    engine = Engine(SPEC)
    events: list[AnyEvent] = []
    start = time.perf_counter()
    for command in commands:
        events.extend(engine.apply(command))
    seconds = time.perf_counter() - start

    trades = [event for event in events if type(event) is Trade]
    volume = sum(trade.quantity for trade in trades)
    notional = sum(trade.quantity * trade.price for trade in trades)
    statuses = Counter(
        (event.status.value, event.reason.name if event.reason else "")
        for event in events if type(event) is OrderUpdate
    )
    rejected = sum(1 for event in events if type(event) is OrderRejected)
    say(f"\nmatched {count:,} commands in {seconds:.2f} s "
        f"({count / seconds:,.0f} commands/s, {len(events):,} events)\n")
    say(f"  trades: {len(trades):,}   volume: {SPEC.from_lots(volume)} {SPEC.base}   "
        f"notional: {SPEC.from_notional_units(notional)} {SPEC.quote}   rejected: {rejected:,}\n")
    say("  order updates: " + ", ".join(
        f"{status}{' (' + reason + ')' if reason else ''} {n:,}"
        for (status, reason), n in statuses.most_common()) + "\n")
    if trades:
        last = trades[-1]
        say(f"  last trade: #{last.trade_id} {SPEC.from_lots(last.quantity)} {SPEC.base} at "
            f"{SPEC.from_ticks(last.price)} {SPEC.quote} ({last.aggressor_side.value} aggressor)\n")
    return engine


def _show_book(engine: Engine, depth: int, seed: int, out: TextIO) -> None:
    """The top of the book after the workload, and the state hash that proves replay."""
    say = out.write
    book = engine.l2(depth)
    say(f"\norder book after sequence {book.sequence:,} (top {depth} levels):\n")
    say(f"  {'bids: qty':>22} {'price':>10} | {'price':<10} {'asks: qty':<22}\n")
    for row in range(max(len(book.bids), len(book.asks))):
        bid = book.bids[row] if row < len(book.bids) else None
        ask = book.asks[row] if row < len(book.asks) else None
        left = (f"{SPEC.from_lots(bid.quantity) + f' ({bid.order_count})':>22} "
                f"{SPEC.from_ticks(bid.price):>10}") if bid else " " * 33
        right = (f"{SPEC.from_ticks(ask.price):<10} "
                 f"{SPEC.from_lots(ask.quantity) + f' ({ask.order_count})':<22}") if ask else ""
        say(f"  {left} | {right}\n")
    whole = engine.l2(10**9)
    resting = sum(level.order_count for level in whole.bids + whole.asks)
    say(f"\n{resting:,} orders rest in the book; state hash {engine.state_hash()[:16]}...\n")
    say("the same commands give the same hash on every run and machine: "
        f"run `tradeplane demo --seed {seed}` again to see it.\n")
