"""``make bench``: the ledger alone — can one shard keep up with one market's engine?

1. The core (compiled by ``make native``, as the matching core is). The standard
   workload (``tradeplane_engine.workload``) runs through the real matching ``Engine``
   as the exchange runs it with balances: every place is named as the gateway names it
   and funded first (``FundOrder``: the hold, then the ``Forward`` the engine applies),
   and every events message the engine produces is settled (``Settle``, with the order
   events the ledger service reads; book levels are left out, as the service leaves
   them out). The ledger commands are built once, untimed; the timed pass applies them
   to a fresh ``Ledger`` with its accounts funded, beside the engine core applying the
   workload alone, in the same process and run, so the ratio of the two rates is the
   shard's headroom over a market. A second, instrumented pass splits the ledger's time
   between holds and settlements. Then the workload with its events settled 32
   commands at a time, as a loaded shard receives them. Then the same stream split as
   several shards would see it: each shard timed on its part, and on choosing it from
   every event of the market, the slowest one's pace set against the engine core's.
2. The service. A ledger shard process (``tradeplane ledger --shards 1``, leading
   alone) on a real nats-server, fed orders straight on its command stream as fast as
   it takes them, first one ``fundOrder`` a message, then in ``fundOrders`` of 32 (as
   a loaded gateway sends what it read together): funded orders per second, counted
   from the first command sequenced to the last one's events published by the shard
   and its order forwarded into its market's command stream (no engine consumes it).

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from tradeplane.ledger_tools import stored_outcome, submit
from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets
from tradeplane.up_ledger import asset_decimals, wait_for_ledger
from tradeplane_engine.access import Access
from tradeplane_engine.core import AnyCommand, Engine, Place, Side
from tradeplane_engine.core.events import (
    AnyEvent,
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderUpdate,
    Trade,
)
from tradeplane_engine.ledger import (
    AnyLedgerCommand,
    DefineAsset,
    DefineMarket,
    Deposit,
    Forward,
    Funded,
    FundOrder,
    FundOrders,
    Ledger,
    Refused,
    Report,
    Settle,
)
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import (
    LedgerBatch,
    LedgerSource,
    MarketDefinition,
    command_stream,
    encode_ledger_command,
    header_sequence,
    ledger_command_stream,
    ledger_command_subject,
    ledger_event_subject,
)
from tradeplane_engine.workload import ACCOUNTS, SPEC, generate, to_commands

MARKET = "sol-usdt"
DECIMALS = {"SOL": 4, "USDT": 6}
"""A lot of 0.01 SOL is 100 units; a tick × lot (0.01 × 0.01 USDT) is 100 USDT units."""
MAKER_BPS, TAKER_BPS = 2, 5
"""Fees on, so every fill pays its fee legs as it would on a real market."""
FUNDS = {"SOL": 10**13, "USDT": 10**15}
"""Each account's deposit, in units: far more than the workload can spend (the
``$world`` total stays within a snapshot's 64 bits)."""
ORDER_EVENTS = (Trade, OrderAccepted, OrderRejected, OrderUpdate, OrderReplaced)


# -- the core ---------------------------------------------------------------------------


def funded_ledger(shard: int = 0, shards: int = 1) -> Ledger:
    """A shard with the market defined and every workload account of it funded."""
    ledger = Ledger(shard, shards)
    sequence = 0

    def apply(command: AnyLedgerCommand) -> None:
        for event in ledger.apply(command):
            if isinstance(event, Refused):
                raise SystemExit(f"setting up the ledger: {event.reason}")

    for asset, decimals in DECIMALS.items():
        sequence += 1
        apply(DefineAsset(sequence, sequence, asset=asset, decimals=decimals))
    sequence += 1
    apply(DefineMarket(sequence, sequence, market=MARKET, base=SPEC.base, quote=SPEC.quote,
                       tick_size=SPEC.tick_size, lot_size=SPEC.lot_size,
                       maker_bps=MAKER_BPS, taker_bps=TAKER_BPS))
    for number in range(ACCOUNTS):
        if not ledger.owns(f"acct-{number}"):
            continue
        for asset, amount in FUNDS.items():
            sequence += 1
            apply(Deposit(sequence, sequence, transfer_id=f"t-{number}-{asset}",
                          account=f"acct-{number}", asset=asset, amount=amount))
    return ledger


def ledger_commands(commands: list[AnyCommand], group: int = 1) -> list[AnyLedgerCommand]:
    """What the shard's stream holds for the workload: each place's ``fundOrder`` and a
    ``settle`` of the events messages of every ``group`` workload commands, in an order
    the exchange may sequence them (orders funded, then their events settled). With
    ``group`` 1 every events message is settled alone, as at a low rate; a loaded
    exchange groups them (the engine writes one events message per applied batch, and
    the ledger settles what it read together)."""
    ledger = funded_ledger()
    engine = Engine(SPEC)
    sequence = ledger.sequence
    out: list[AnyLedgerCommand] = []
    for start in range(0, len(commands), group):
        sent: list[AnyCommand] = []
        for command in commands[start:start + group]:
            if isinstance(command, Place):
                # Named, as the gateway names every order it sends to the ledger.
                command = msgspec.structs.replace(command,
                                                  client_order_id=f"g{command.sequence}")
                sequence += 1
                fund = FundOrder(sequence, sequence, market=MARKET, place=command)
                forwards = [event for event in ledger.apply(fund)
                            if isinstance(event, Forward)]
                if len(forwards) != 1 or not isinstance(forwards[0].command, Place):
                    raise SystemExit(f"order {command.sequence} was not funded")
                out.append(fund)
                command = forwards[0].command
            sent.append(command)
        reports: list[Report] = []
        for command in sent:
            events: list[AnyEvent] = [event for event in engine.apply(command)
                                      if isinstance(event, ORDER_EVENTS)]
            if events:
                reports.append(Report(command.sequence, command.sequence, events))
        if reports:
            sequence += 1
            settle = Settle(sequence, sequence, market=MARKET, reports=reports)
            ledger.apply(settle)
            out.append(settle)
    breaches = ledger.audit()
    if breaches:
        raise SystemExit("the ledger's audit failed: " + "; ".join(breaches[:3]))
    return out


@dataclass
class CoreFigures:
    engine_seconds: float
    ledger_seconds: float
    hold_seconds: float
    """Holds' share of an instrumented pass (it pays a clock read per command)."""
    settle_seconds: float


def timed[T](call: Callable[[T], object], items: list[T]) -> float:
    """Seconds ``call`` takes over ``items``, after a collection."""
    gc.collect()
    start = time.perf_counter()
    for item in items:
        call(item)
    return time.perf_counter() - start


def time_engine(commands: list[AnyCommand]) -> float:
    return timed(Engine(SPEC).apply, commands)


def time_ledger(commands: list[AnyLedgerCommand], shard: int = 0,
                shards: int = 1) -> tuple[float, str]:
    ledger = funded_ledger(shard, shards)
    return timed(ledger.apply, commands), ledger.state_hash()


def time_ledger_split(commands: list[AnyLedgerCommand]) -> tuple[float, float]:
    ledger = funded_ledger()
    apply = ledger.apply
    clock = time.perf_counter
    hold = settle = 0.0
    gc.collect()
    for command in commands:
        start = clock()
        apply(command)
        if type(command) is FundOrder:
            hold += clock() - start
        else:
            settle += clock() - start
    return hold, settle


def compiled() -> str:
    import tradeplane_engine.core.matching as matching
    import tradeplane_engine.ledger.state as state

    def kind(path: str) -> str:
        return "compiled" if path.endswith((".so", ".pyd")) else "pure"

    return f"engine core {kind(matching.__file__)}, ledger core {kind(state.__file__)}"


def bench_core(count: int, seed: int, repeat: int, shard_counts: list[int]) -> None:
    print(f"ledger core: the standard workload, {count:,} commands, seed {seed} "
          f"({compiled()})", flush=True)
    commands = to_commands(generate(count, seed))
    ledger_stream = ledger_commands(commands)
    holds = sum(1 for command in ledger_stream if type(command) is FundOrder)
    settlements = len(ledger_stream) - holds
    settled_events = sum(len(report.events) for command in ledger_stream
                         if isinstance(command, Settle) for report in command.reports)
    print(f"  {holds:,} fundOrder and {settlements:,} settle commands "
          f"({settled_events:,} order events settled), {ACCOUNTS:,} accounts, fees "
          f"{MAKER_BPS}/{TAKER_BPS} bps", flush=True)
    runs: list[CoreFigures] = []
    hashes: set[str] = set()
    for number in range(repeat):
        engine_seconds = time_engine(commands)
        ledger_seconds, state_hash = time_ledger(ledger_stream)
        hashes.add(state_hash)
        hold_seconds, settle_seconds = time_ledger_split(ledger_stream)
        runs.append(CoreFigures(engine_seconds, ledger_seconds, hold_seconds, settle_seconds))
        print(f"  pass {number + 1}/{repeat}: engine {count / engine_seconds / 1e3:,.0f}k "
              f"commands/s, ledger {len(ledger_stream) / ledger_seconds / 1e3:,.0f}k "
              "commands/s", flush=True)
    if len(hashes) != 1:
        raise SystemExit("the ledger's passes ended in different states")

    def median(values: list[float]) -> float:
        return statistics.median(values)

    engine_rate = median([count / run.engine_seconds for run in runs])
    ledger_seconds = median([run.ledger_seconds for run in runs])
    ledger_rate = len(ledger_stream) / ledger_seconds
    hold_us = median([run.hold_seconds / holds * 1e6 for run in runs])
    settle_us = median([run.settle_seconds / settlements * 1e6 for run in runs])
    print()
    print(f"  engine core (matching alone)   {engine_rate:>12,.0f} commands/s")
    print(f"  ledger core (holds + settles)  {ledger_rate:>12,.0f} commands/s")
    print(f"    holds                        {holds / ledger_seconds:>12,.0f} /s "
          f"({hold_us:.2f} µs each)")
    print(f"    settlements                  {settlements / ledger_seconds:>12,.0f} /s "
          f"({settle_us:.2f} µs each)")
    print(f"    workload commands covered    {count / ledger_seconds:>12,.0f} /s "
          "(each place funded, each events message settled)")
    print(f"  ratio ledger commands/s ÷ engine commands/s: {ledger_rate / engine_rate:.2f}")
    print(f"  ratio workload commands/s, ledger ÷ engine:  "
          f"{count / ledger_seconds / engine_rate:.2f}", flush=True)
    bench_grouped(commands, engine_rate, repeat)
    bench_shards(count, ledger_stream, engine_rate, shard_counts, repeat)


GROUP = 32
"""Workload commands whose events one ``settle`` carries in the grouped measurement."""


def bench_grouped(commands: list[AnyCommand], engine_rate: float, repeat: int) -> None:
    """The same workload with its events settled ``GROUP`` commands at a time, as a loaded
    shard receives them: a ``settle``'s own cost is shared by its events messages."""
    stream = ledger_commands(commands, GROUP)
    seconds = statistics.median([time_ledger(stream)[0] for _ in range(repeat)])
    settles = sum(1 for command in stream if type(command) is Settle)
    print(f"  settled {GROUP} commands' events at a time ({settles:,} settle commands): "
          f"{len(commands) / seconds:,.0f} workload commands/s = "
          f"{len(commands) / seconds / engine_rate:.2f} × the engine core", flush=True)


def shard_stream(stream: list[AnyLedgerCommand], ledger: Ledger) -> list[AnyLedgerCommand]:
    """What one shard of several is given of a one-shard stream: the ``fundOrder`` of its
    accounts, and in each ``settle`` the events that concern it (as its service filters
    them), numbered on from the shard's own sequence."""
    out: list[AnyLedgerCommand] = []
    sequence = ledger.sequence
    for command in stream:
        if isinstance(command, FundOrder):
            if not ledger.owns(command.place.account):
                continue
        elif isinstance(command, Settle):
            reports = [Report(report.events_sequence, report.position, events)
                       for report in command.reports
                       if (events := [event for event in report.events
                                      if ledger.concerns(event)])]
            if not reports:
                continue
            command = msgspec.structs.replace(command, reports=reports)
        sequence += 1
        out.append(msgspec.structs.replace(command, sequence=sequence, timestamp=sequence))
    return out


def time_filter(stream: list[AnyLedgerCommand], ledger: Ledger) -> float:
    """What a shard's service spends choosing the events that concern it: every order
    event of the market passes through ``Ledger.concerns``."""
    events = [event for command in stream if isinstance(command, Settle)
              for report in command.reports for event in report.events]
    return timed(ledger.concerns, events)


def bench_shards(commands: int, stream: list[AnyLedgerCommand], engine_rate: float,
                 counts: list[int], repeat: int) -> None:
    """The same workload on several shards, each of its own accounts: the slowest shard's
    pace, in workload commands per second, against the engine core's."""
    print()
    print("  sharded (each shard: its accounts' holds, the events that concern them, and "
          "choosing those from every event of the market)")
    for shards in counts:
        slowest = 0.0
        sizes = []
        for shard in range(shards):
            part = shard_stream(stream, funded_ledger(shard, shards))
            sizes.append(len(part))
            seconds = statistics.median(
                [time_ledger(part, shard, shards)[0]
                 + time_filter(stream, funded_ledger(shard, shards)) for _ in range(repeat)])
            slowest = max(slowest, seconds)
        print(f"    {shards} shards: {min(sizes):,} to {max(sizes):,} commands each; the "
              f"slowest covers {commands / slowest:>10,.0f} workload commands/s = "
              f"{commands / slowest / engine_rate:.2f} × the engine core", flush=True)


# -- the service ------------------------------------------------------------------------

SERVICE_MARKET = MarketDefinition(name="bench-usdt", base="BENCH", quote="USDT",
                                  tick_size="0.01", lot_size="0.01", reference_price="100")
SERVICE_ACCOUNTS = 100


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process, from /proc (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def outcome(nc: Client, sequence: int, timeout: float = 30.0) -> LedgerBatch:
    """What the shard published for its command ``sequence``, waiting for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = await stored_outcome(nc, 0, sequence)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"the ledger published nothing for command {sequence}")
        await asyncio.sleep(0.01)


def service_place(number: int) -> Place:
    account = f"trader{number % SERVICE_ACCOUNTS}"
    side = Side.BUY if number % 2 else Side.SELL
    return Place(0, 0, account, side, quantity=1 + number % 9, price=9_900 + number % 200,
                 client_order_id=f"o{number}")


def fund_order(number: int) -> bytes:
    return encode_ledger_command(FundOrder(0, 0, market=SERVICE_MARKET.name,
                                           place=service_place(number)))


def fund_orders(first: int, count: int) -> bytes:
    """Orders ``first`` to ``first + count - 1`` in one ``fundOrders``, as a gateway
    sends the orders it read together."""
    return encode_ledger_command(FundOrders(0, 0, orders=[
        Funded(SERVICE_MARKET.name, service_place(number))
        for number in range(first, first + count)]))


async def feed_ledger(url: str, admin: Access, gateway: Access, ledger_pid: int,
                      orders: int, window: int, per_message: int) -> None:
    """Set the shard up as the administrator, then send the orders as a gateway does (on
    the ``order`` source's subject, the only one the shard funds orders from): one
    ``fundOrder`` a message, then ``fundOrders`` of ``per_message`` orders."""
    nc = await nats.connect(url, **admin.options())
    orders_nc = await nats.connect(url, pending_size=256 * 1024 * 1024, **gateway.options())
    orders_js = orders_nc.jetstream()
    order_subject = ledger_command_subject(0, LedgerSource.ORDER)
    try:
        await wait_for_ledger(nc, 1)
        for asset, places in sorted(asset_decimals([SERVICE_MARKET]).items()):
            await submit(nc, 0, DefineAsset(0, 0, asset=asset, decimals=places))
        for number in range(SERVICE_ACCOUNTS):
            for asset, places in sorted(asset_decimals([SERVICE_MARKET]).items()):
                await submit(nc, 0, Deposit(0, 0, transfer_id=f"bench-{number}-{asset}",
                                            account=f"trader{number}", asset=asset,
                                            amount=10**7 * 10**places))
        # The leader defines the market once its assets are: until then an order is
        # refused as not funded.
        probe = 0
        while True:
            probe += 1
            ack = await orders_js.publish(order_subject, fund_order(-probe))
            if any(isinstance(event, Forward) for event in (await outcome(nc, ack.seq)).events):
                break
            await asyncio.sleep(0.05)
        await feed_orders(nc, orders_nc, ledger_pid, 0, orders, window, 1)
        await feed_orders(nc, orders_nc, ledger_pid, orders, orders, window, per_message)
    finally:
        await orders_nc.close()
        await nc.close()


async def feed_orders(nc: Client, orders_nc: Client, ledger_pid: int, first: int,
                      orders: int, window: int, per_message: int) -> None:
    """Orders ``first`` on, ``orders`` of them, ``per_message`` to a message (one: a
    ``fundOrder`` each), the messages sent ``window`` at a time, each window awaiting its
    acknowledgements; the figures printed."""
    js = nc.jetstream()
    orders_js = orders_nc.jetstream()
    order_subject = ledger_command_subject(0, LedgerSource.ORDER)
    market_stream = command_stream(SERVICE_MARKET.name)
    forwarded_before = (await js.stream_info(market_stream)).state.messages
    payloads = ([fund_order(number) for number in range(first, first + orders)]
                if per_message == 1 else
                [fund_orders(number, min(per_message, first + orders - number))
                 for number in range(first, first + orders, per_message)])
    published = asyncio.get_running_loop().create_future()
    last: list[int] = []
    highest = 0

    async def on_events(msg: Msg) -> None:
        nonlocal highest
        sequence = header_sequence(msg.headers)
        if sequence is None or sequence <= highest:
            return
        highest = sequence
        if last and sequence >= last[0] and not published.done():
            published.set_result(time.perf_counter())

    highest = (await js.stream_info(ledger_command_stream(0))).state.last_seq
    subscription = await nc.subscribe(ledger_event_subject(0), cb=on_events)
    await nc.flush()
    cpu_before = cpu_seconds(ledger_pid)
    started = time.perf_counter()
    for offset in range(0, len(payloads), window):
        acks = await asyncio.gather(*[await orders_js.publish_async(order_subject, payload)
                                      for payload in payloads[offset:offset + window]])
    sequenced = time.perf_counter()
    last.append(max(ack.seq for ack in acks))
    if highest >= last[0] and not published.done():
        published.set_result(time.perf_counter())
    done = await asyncio.wait_for(published, 120)
    while (await js.stream_info(market_stream)).state.messages < forwarded_before + orders:
        await asyncio.sleep(0.01)
    forwarded = time.perf_counter()
    cpu = cpu_seconds(ledger_pid) - cpu_before
    await subscription.unsubscribe()
    batch = await outcome(nc, last[0])
    if not any(isinstance(event, Forward) for event in batch.events):
        raise SystemExit(f"the last order was not funded: {batch.events}")
    kind = ("fundOrder commands" if per_message == 1 else
            f"orders in fundOrders of {per_message}")
    print(f"  {orders:,} {kind} sequenced in {sequenced - started:.2f} s "
          f"({orders / (sequenced - started):,.0f}/s offered)")
    print(f"  funded orders (events published)   {orders / (done - started):>10,.0f}/s")
    print(f"  funded orders (forwards stored)    {orders / (forwarded - started):>10,.0f}/s")
    print(f"  ledger process CPU per order       {cpu / orders * 1e6:>10,.0f} µs", flush=True)


def bench_service(orders: int, window: int, per_message: int) -> None:
    print(f"ledger service: one shard process leading alone on nats-server (file storage, "
          f"authenticated), fed {orders:,} orders on its stream one fundOrder a message, "
          f"then {orders:,} more in fundOrders of {per_message}; {window:,} messages in "
          "flight", flush=True)
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory, \
            NatsServer.secured(Path(directory) / "nats").start() as server:
        assert server.secrets is not None
        admin = server.access("admin")
        asyncio.run(publish_markets(server.url, [SERVICE_MARKET], StreamSettings(), admin))
        ledger = spawn(tradeplane_command(
            "--nats", server.url, "--credentials",
            str(server.secrets.credentials("ledger")), "ledger", "--shards", "1"))
        try:
            uvloop.run(feed_ledger(server.url, admin, server.access("gateway"), ledger.pid,
                                   orders, window, per_message))
        finally:
            stop(ledger)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=300_000,
                        help="standard workload commands for the core")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of the core")
    parser.add_argument("--shards", type=int, nargs="*", default=[2, 4, 8],
                        help="shard counts the core is also run as")
    parser.add_argument("--orders", type=int, default=50_000,
                        help="fundOrder commands fed to the service")
    parser.add_argument("--window", type=int, default=4_096,
                        help="publishes awaiting their acknowledgement at once")
    parser.add_argument("--per-message", type=int, default=32,
                        help="orders in each fundOrders of the second feed")
    parser.add_argument("--skip-core", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    args = parser.parse_args()
    if not args.skip_core:
        bench_core(args.commands, args.seed, args.repeat, args.shards)
    if not args.skip_service:
        print(flush=True)
        bench_service(args.orders, args.window, args.per_message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
