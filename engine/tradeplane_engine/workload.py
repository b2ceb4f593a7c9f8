"""The standard workload: a fixed-seed stream of limit, IOC and cancel commands.

60% GTC limit orders (buys at 10,000 - d ticks, sells at 10,000 + d, d uniform in
[-17, +50], so about a fifth cross and the book holds 500-1,500 resting orders), 10%
IOC orders priced 100 ticks through the mid, 30% cancels of orders still resting at
that moment, quantities 1-100 lots.

To know which orders still rest, the generator follows the book as it builds the
stream, using the engine itself; the comparison with Liquibook checks that both
engines trade the same quantity on it, so a generator that followed a wrong book
would show.

The stream is engine-neutral tuples ``(kind, order_id, side, price, quantity)`` (side
1 = buy, 2 = sell; cancels carry zeros), so each engine converts it to its own command
objects before its clock starts. An order's account follows from its id
(``account_of``), spread over 1,000 accounts.
"""

from __future__ import annotations

import random

from tradeplane_engine.core import (
    AnyCommand,
    Cancel,
    Engine,
    MarketSpec,
    Place,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

Workload = list[tuple[str, int, int, int, int]]

MID = 10_000
SPEC = MarketSpec(base="SOL", quote="USDT", tick_size="0.01", lot_size="0.01")
ACCOUNTS = 1_000


def account_of(order_id: int) -> str:
    return f"acct-{order_id * 7919 % ACCOUNTS}"


def generate(count: int, seed: int = 42) -> Workload:
    """``count`` commands from ``seed``; the same arguments always give the same stream."""
    rng = random.Random(seed)
    tracker = Engine(SPEC)
    resting: list[int] = []
    workload: Workload = []
    next_order_id = 1
    while len(workload) < count:
        roll = rng.random()
        if roll < 0.3:
            order_id = _pick_resting(rng, tracker, resting)
            if order_id:
                item = ("cancel", order_id, 0, 0, 0)
                workload.append(item)
                tracker.apply(to_command(len(workload), item))
                continue
            roll = 0.3 + rng.random() * 0.7  # nothing rests yet: draw an order instead
        side = 1 if rng.random() < 0.5 else 2
        quantity = rng.randint(1, 100)
        if roll >= 0.4:
            offset = rng.randint(-17, 50)
            item = ("limit", next_order_id, side, MID - offset if side == 1 else MID + offset,
                    quantity)
            resting.append(next_order_id)
        else:
            item = ("ioc", next_order_id, side, MID + 100 if side == 1 else MID - 100, quantity)
        next_order_id += 1
        workload.append(item)
        tracker.apply(to_command(len(workload), item))
    return workload


def to_command(sequence: int, item: tuple[str, int, int, int, int]) -> AnyCommand:
    """The engine command for one workload item (self-trade prevention off, as in Liquibook)."""
    kind, order_id, side, price, quantity = item
    if kind == "cancel":
        return Cancel(sequence, sequence, account_of(order_id), order_id)
    return Place(
        sequence, sequence, account_of(order_id), Side.BUY if side == 1 else Side.SELL,
        quantity, price, time_in_force=TimeInForce.GTC if kind == "limit" else TimeInForce.IOC,
        stp=SelfTradePrevention.NONE,
    )


def to_commands(workload: Workload) -> list[AnyCommand]:
    return [to_command(sequence, item) for sequence, item in enumerate(workload, start=1)]


def _pick_resting(rng: random.Random, tracker: Engine, resting: list[int]) -> int:
    """A random order id that still rests in ``tracker``'s book (and forget it), or 0."""
    while resting:
        index = rng.randrange(len(resting))
        order_id = resting[index]
        resting[index] = resting[-1]
        resting.pop()
        if tracker.open_order(account_of(order_id), order_id) is not None:
            return order_id
    return 0
