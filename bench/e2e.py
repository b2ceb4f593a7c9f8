"""End-to-end benchmark: orders through NATS, the gateway and the engine, on this machine.

Starts a real nats-server (file storage, as ``tradeplane up``), one engine process and
one gateway process, and drives them from this process over several NATS connections:

1. the physical limit: nats-py's JetStream async publish rate into a file stream on
   the same server (every order pays one such publish, and the engine another);
2. for each response mode (``ack``, ``result``): saturation — a closed loop with many
   requests in flight, giving the sustained orders/s — then an open loop at fixed
   offered rates below it. Open-loop latency runs from each request's *scheduled*
   send time to its reply, so a stall counts against every request it delays
   (no coordinated omission). After each saturation run, the CPU time per order of
   every process and the NATS messages per order into and out of nats-server (its
   ``/varz`` counters).

With ``--balances``, the same measurement runs a second time on a fresh exchange with
balances on (docs/ledger.md): a ledger process (``tradeplane ledger --shards 1``), the
gateway with ``--ledger-shards 1``, the assets defined and the accounts funded, so every
order is funded at the ledger before it reaches its market and every events message is
settled after; then both are printed side by side (sustained orders/s, latency at half
of it, CPU per order in each process, the ledger's included).

Everything shares the machine's cores: nats-server, engine, gateway (ledger) and this
load generator. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from tradeplane.ledger_tools import submit
from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets, wait_ready
from tradeplane.up_ledger import asset_decimals, wait_for_ledger
from tradeplane_engine.access import Access, trader_inbox
from tradeplane_engine.ledger import DefineAsset, Deposit, Refused
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import (
    MarketDefinition,
    api_subject,
    command_stream,
    engine_subject,
    ledger_subject,
)

MARKET = MarketDefinition(name="bench-usdt", base="BENCH", quote="USDT", tick_size="0.01",
                          lot_size="0.01", reference_price="100")


@dataclass
class Run:
    mode: str
    offered: float | None
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def sustained(self) -> float:
        return self.ok / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Orders:
    """A stream of limit orders around a mid: about half cross, the book stays bounded."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.number = 0

    def next(self, mode: str) -> tuple[str, bytes]:
        self.number += 1
        side = "buy" if self.number % 2 else "sell"
        offset = self.rng.randint(-20, 20)
        price = 10_000 + (offset if side == "buy" else -offset)
        body = {"market": MARKET.name, "side": side, "quantity": f"{self.rng.randint(1, 9)}",
                "price": f"{price // 100}.{price % 100:02d}", "response": mode,
                "timeInForce": "IOC" if self.number % 10 == 0 else "GTC"}
        return "place", json.dumps(body).encode()


async def measure_jetstream_limit(url: str, messages: int) -> float:
    nc = await nats.connect(url, **ACCESS.options())
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="bench-limit", subjects=["bench.limit"],
                                     storage=StorageType.FILE))
    payload = b"x" * 200
    started = time.perf_counter()
    pending = [await js.publish_async("bench.limit", payload) for _ in range(messages)]
    await asyncio.gather(*pending)
    seconds = time.perf_counter() - started
    await js.delete_stream("bench-limit")
    await nc.close()
    return messages / seconds


async def jetstream_open_loop(url: str, rate: float, seconds: float) -> Run:
    """The limit path measured like the exchange: JetStream publishes at a fixed rate,
    latency from each one's scheduled time to its acknowledgement."""
    nc = await nats.connect(url, **ACCESS.options())
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="bench-floor", subjects=["bench.floor"],
                                     storage=StorageType.FILE))
    run = Run("js", rate, 0, 0, 0, seconds, [])

    async def publish(number: int, scheduled: float) -> None:
        await js.publish("bench.floor", b"x" * 200)
        run.ok += 1
        run.latencies.append(time.perf_counter() - scheduled)

    await drive(run, publish)
    await js.delete_stream("bench-floor")
    await nc.close()
    return run


ACCESS = Access()
"""How the load generator connects: the admin's credentials when NATS authenticates."""
ACCOUNTS: dict[int, str] = {}
"""Each load-generator connection's account (its inbox prefix is the account's)."""
ADMIN: Client | None = None
"""With balances, the administrator's connection (to read the ledger's status)."""


async def _request(nc: Client, verb: str, payload: bytes, scheduled: float,
                   run: Run) -> None:
    try:
        reply = await nc.request(api_subject(ACCOUNTS[id(nc)], verb), payload,
                                 timeout=30)
    except Exception:  # a lost request is a figure, not a crash
        run.errors += 1
        return
    if b'"ok":true' in reply.data:
        run.ok += 1
        run.latencies.append(time.perf_counter() - scheduled)
    else:
        run.errors += 1


async def saturate(connections: list[Client], mode: str, seconds: float,
                   in_flight: int) -> Run:
    orders = Orders(seed=1)
    run = Run(mode, None, 0, 0, 0, seconds, [])
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nc = connections[index % len(connections)]
        while time.perf_counter() < deadline:
            subject, payload = orders.next(mode)
            run.sent += 1
            await _request(nc, subject, payload, time.perf_counter(), run)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(in_flight)))
    run.seconds = time.perf_counter() - started
    return run


async def drive(run: Run, send: Callable[[int, float], Coroutine[Any, Any, None]]) -> None:
    """Start ``send(number, scheduled_time)`` at ``run.offered`` per second, on schedule
    whatever the replies do (an open loop), and wait for the last one."""
    rate = run.offered or 1.0
    started = time.perf_counter()
    total = int(rate * run.seconds)
    tasks: set[asyncio.Task[None]] = set()
    while run.sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while run.sent < due:
            task = asyncio.create_task(send(run.sent, started + run.sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            run.sent += 1
        # Sleep until the next request is due (the event loop's timers tick in whole ms).
        await asyncio.sleep(max(0.001, started + run.sent / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - started


async def open_loop(connections: list[Client], mode: str, rate: float,
                    seconds: float) -> Run:
    orders = Orders(seed=2)
    run = Run(mode, rate, 0, 0, 0, seconds, [])

    async def send(number: int, scheduled: float) -> None:
        subject, payload = orders.next(mode)
        await _request(connections[number % len(connections)], subject, payload, scheduled,
                       run)

    await drive(run, send)
    return run


async def drain(nc: Client) -> float:
    """Wait until the engine has applied every sequenced command (and, with balances,
    the ledger has settled the events of all of them); how long that took. The ledger's
    status answers the administrator only: ``ADMIN`` asks it."""
    started = time.perf_counter()
    js = nc.jetstream()
    last = (await js.stream_info(command_stream(MARKET.name))).state.last_seq
    while True:
        status = json.loads((await nc.request(engine_subject(MARKET.name, "status"), b"",
                                              timeout=5)).data)
        if status["sequence"] >= last:
            break
        await asyncio.sleep(0.01)
    deadline = time.perf_counter() + 120
    while ADMIN is not None:
        if time.perf_counter() > deadline:
            raise SystemExit("the ledger did not settle the market's events in 120 s")
        try:  # a ledger with a backlog may answer late: its loop is busy with it
            ledger = json.loads((await ADMIN.request(ledger_subject(0, "status"), b"",
                                                     timeout=5)).data)
        except nats.errors.TimeoutError:
            continue
        if ledger["settled"].get(MARKET.name, 0) >= last:
            break
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


class CpuMeter:
    """CPU seconds used by each process of the exchange, from /proc (Linux)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self.read()

    def read(self) -> dict[str, float]:
        used = {}
        for name, pid in self.processes.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                return {}
            used[name] = (int(fields[11]) + int(fields[12])) / self._ticks
        return used

    def per_order(self, orders: int) -> str:
        """Microseconds of CPU per order in each process since the last call."""
        return cpu_text(self.figures(orders))

    def figures(self, orders: int) -> dict[str, float]:
        """Microseconds of CPU per order in each process since the last call."""
        now = self.read()
        if not now or not self._start or not orders:
            return {}
        used = {name: (now[name] - self._start[name]) / orders * 1e6
                for name in self.processes}
        self._start = now
        return used


def cpu_text(used: dict[str, float]) -> str:
    if not used:
        return ""
    return "  CPU per order: " + ", ".join(f"{name} {value:.0f} µs"
                                          for name, value in used.items())


def report(run: Run, limit: float) -> str:
    offered = "saturation" if run.offered is None else f"{run.offered:>10,.0f}/s"
    return (f"  {run.mode:<6} {offered:>12}  sustained {run.sustained:>8,.0f}/s "
            f"({run.sustained / limit:>4.0%} of limit)  p50 {run.percentile(0.5) * 1e3:6.2f} ms"
            f"  p99 {run.percentile(0.99) * 1e3:7.2f} ms  p99.9 "
            f"{run.percentile(0.999) * 1e3:7.2f} ms  errors {run.errors}")


@dataclass
class Summary:
    """One response mode's figures, for the side-by-side table."""

    sustained: float
    p50: float
    p99: float
    cpu: dict[str, float]
    """µs of CPU per order in each process, at saturation."""
    messages: tuple[float, float] = (float("nan"), float("nan"))
    """NATS messages per order at saturation: into nats-server, and out of it."""


class MessageMeter:
    """Messages into and out of nats-server (its ``/varz`` counters), per order."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self._start = self.read()

    def read(self) -> tuple[int, int]:
        _, varz = self.server.monitor("varz")
        return int(varz["in_msgs"]), int(varz["out_msgs"])

    def restart(self) -> None:
        self._start = self.read()

    def per_order(self, orders: int) -> tuple[float, float]:
        now = self.read()
        into, out = (now[0] - self._start[0], now[1] - self._start[1])
        self._start = now
        return (into / orders, out / orders) if orders else (float("nan"), float("nan"))


async def benchmark(url: str, args: argparse.Namespace, processes: dict[str, int],
                    server: NatsServer,
                    fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
                    with_floor: bool = True) -> dict[str, Summary]:
    limit = statistics.median([await measure_jetstream_limit(url, args.limit_messages)
                               for _ in range(3)])
    print(f"JetStream async publish (nats-py, file storage, 200 B): {limit:,.0f} msg/s "
          "— the physical limit of this path here", flush=True)
    summaries: dict[str, Summary] = {}
    global ADMIN
    ADMIN = await nats.connect(url, **ACCESS.options()) if "ledger" in processes else None
    connections = []
    for number in range(args.clients):
        account = f"trader{number}"
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024,
                                **ACCESS.options(trader_inbox(account)))
        ACCOUNTS[id(nc)] = account
        connections.append(nc)
    # The load generator's own garbage collections would show up as exchange latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        # Warm up (imports, JIT-free but caches and the book).
        await saturate(connections, "result", 1.0, 64)
        await drain(connections[0])
        cpu = CpuMeter(processes)
        messages = MessageMeter(server)
        for mode in ("ack", "result"):
            messages.restart()
            top = await saturate(connections, mode, args.seconds, args.in_flight)
            backlog = await drain(connections[0])
            print(report(top, limit) + f"  engine backlog drained in {backlog:.1f} s",
                  flush=True)
            used = cpu.figures(top.ok)
            carried = messages.per_order(top.ok)
            print(cpu_text(used), flush=True)
            print(f"  NATS messages per order: {carried[0]:.2f} into nats-server, "
                  f"{carried[1]:.2f} out of it (a request and its reply alone: 2 and 2)",
                  flush=True)
            summaries[mode] = Summary(top.sustained, float("nan"), float("nan"), used,
                                      carried)
            for fraction in fractions:
                run = await open_loop(connections, mode, top.sustained * fraction,
                                      args.seconds)
                backlog = await drain(connections[0])
                print(report(run, limit) + f"  engine backlog drained in {backlog:.1f} s",
                      flush=True)
                print(cpu.per_order(run.ok), flush=True)
                if fraction == 0.5:
                    summaries[mode].p50 = run.percentile(0.5)
                    summaries[mode].p99 = run.percentile(0.99)
                if mode == "result" and with_floor:
                    floor = await jetstream_open_loop(url, run.offered or 0, args.seconds)
                    print(report(floor, limit) + "  <- the bare JetStream publish, same rate",
                          flush=True)
                    cpu.per_order(1)  # not the exchange's CPU
    finally:
        for nc in connections:
            await nc.close()
        if ADMIN is not None:
            await ADMIN.close()
    return summaries


async def fund_accounts(url: str, access: Access, clients: int) -> None:
    """Define the market's assets to the ledger and give each load-generator account
    plenty of both: more than a run can spend, and little enough that the shard's
    totals fit the 64-bit integers of its snapshot (its status hashes it)."""
    decimals = asset_decimals([MARKET])
    nc = await nats.connect(url, **access.options())
    try:
        await wait_for_ledger(nc, 1)
        outcomes = [await submit(nc, 0, DefineAsset(0, 0, asset=asset, decimals=places))
                    for asset, places in sorted(decimals.items())]
        outcomes += [await submit(nc, 0, Deposit(0, 0, transfer_id=f"bench-{number}-{asset}",
                                                 account=f"trader{number}", asset=asset,
                                                 amount=10**9 * 10**places))
                     for number in range(clients) for asset, places in sorted(decimals.items())]
        refused = [event.reason for outcome in outcomes for event in outcome.batch.events
                   if isinstance(event, Refused)]
        if refused:
            raise SystemExit(f"funding the accounts: {refused[0]}")
        # The ledger's leader defines the market once its assets are; until then an
        # order is refused (501), so wait for it.
        while not await _funded(url):
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _funded(url: str) -> bool:
    """Whether a small order of trader0 is taken (the market is defined to the ledger)."""
    probe = await nats.connect(url, **ACCESS.options(trader_inbox("trader0")))
    try:
        body = {"market": MARKET.name, "side": "buy", "quantity": "1", "price": "1.00",
                "response": "ack", "timeInForce": "IOC"}
        reply = await probe.request(api_subject("trader0", "place"),
                                    json.dumps(body).encode(), timeout=10)
        return b'"ok":true' in reply.data
    finally:
        await probe.close()


def measure(args: argparse.Namespace, balances: bool) -> dict[str, Summary]:
    """Start an exchange (nats-server, an engine, a gateway; with ``balances``, a ledger
    shard too), measure it, stop it."""
    global ACCESS
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory:
        data = Path(directory)
        nats_server = (NatsServer(data / "nats", monitoring=True) if args.no_auth else
                       NatsServer.secured(data / "nats", monitoring=True))
        print("NATS authentication and permissions: "
              f"{'off (--no-auth)' if args.no_auth else 'on (docs/security.md)'}", flush=True)
        with nats_server.start() as server:
            ACCESS = server.access("admin")  # the load generator acts as its accounts

            def as_service(identity: str) -> list[str]:
                if server.secrets is None:
                    return ["--nats", server.url]
                return ["--nats", server.url, "--credentials",
                        str(server.secrets.credentials(identity))]

            asyncio.run(publish_markets(server.url, [MARKET], StreamSettings(), ACCESS))
            children = {"engine": spawn(tradeplane_command(*as_service("engine"), "engine",
                                                           "--market", MARKET.name))}
            ledger_shards = ["--ledger-shards", "1"] if balances else []
            if balances:
                children["ledger"] = spawn(tradeplane_command(*as_service("ledger"), "ledger",
                                                              "--shards", "1"))
            children["gateway"] = spawn(tradeplane_command(*as_service("gateway"), "gateway",
                                                           *ledger_shards))
            try:
                asyncio.run(wait_ready(server.url, [MARKET.name], list(children.values()),
                                       access=ACCESS))
                if balances:
                    asyncio.run(fund_accounts(server.url, ACCESS, args.clients))
                assert server.process is not None
                processes = {"nats-server": server.process.pid,
                             **{name: child.pid for name, child in children.items()},
                             "load generator": os.getpid()}
                if not balances:
                    return uvloop.run(benchmark(server.url, args, processes, server))
                return uvloop.run(benchmark(server.url, args, processes, server,
                                            fractions=(0.5,), with_floor=False))
            finally:
                for child in reversed(children.values()):
                    stop(child)


def side_by_side(off: dict[str, Summary], on: dict[str, Summary]) -> None:
    print()
    print("balances off and on, side by side (latency at half the sustained rate; CPU at "
          "saturation)")
    print(f"  {'':<38}{'off':>12}{'on':>12}{'on ÷ off':>10}")
    nan = float("nan")
    for mode in ("ack", "result"):
        rows = [(f"{mode}: sustained orders/s", off[mode].sustained, on[mode].sustained,
                 "{:,.0f}"),
                (f"{mode}: p50 ms at half of it", off[mode].p50 * 1e3, on[mode].p50 * 1e3,
                 "{:.2f}"),
                (f"{mode}: p99 ms at half of it", off[mode].p99 * 1e3, on[mode].p99 * 1e3,
                 "{:.2f}")]
        rows += [(f"{mode}: NATS messages {way} per order", off[mode].messages[side],
                  on[mode].messages[side], "{:.2f}")
                 for side, way in ((0, "in"), (1, "out"))]
        names = list(dict.fromkeys([*off[mode].cpu, *on[mode].cpu]))
        rows += [(f"{mode}: CPU µs/order, {name}", off[mode].cpu.get(name, nan),
                  on[mode].cpu.get(name, nan), "{:.0f}") for name in names]
        total = (f"{mode}: CPU µs/order, exchange", _exchange(off[mode].cpu),
                 _exchange(on[mode].cpu), "{:.0f}")
        for label, before, after, form in [*rows, total]:
            # A process one exchange does not run (the ledger without balances): "-".
            ratio = f"{after / before:.2f}" if before and not math.isnan(before) else "-"
            shown = ["-" if math.isnan(value) else form.format(value)
                     for value in (before, after)]
            print(f"  {label:<38}{shown[0]:>12}{shown[1]:>12}{ratio:>10}")


def _exchange(cpu: dict[str, float]) -> float:
    """CPU per order of the exchange's own processes (not the load generator's)."""
    return sum(used for name, used in cpu.items() if name != "load generator")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--clients", type=int, default=4, help="NATS connections")
    parser.add_argument("--in-flight", type=int, default=256,
                        help="outstanding requests at saturation")
    parser.add_argument("--limit-messages", type=int, default=50_000)
    parser.add_argument("--balances", action="store_true",
                        help="measure again with balances on (a ledger shard) and print "
                             "both side by side")
    parser.add_argument("--no-auth", action="store_true",
                        help="run NATS without authentication (to measure what auth costs)")
    args = parser.parse_args()
    print(f"end to end: {args.clients} client connections, one engine process, one gateway "
          f"process, nats-server, all on this machine; {args.seconds:.0f} s per run",
          flush=True)
    off = measure(args, balances=False)
    if args.balances:
        print()
        print("with balances: one ledger process (tradeplane ledger --shards 1) funds every "
              "order and settles its market's events; the gateway with --ledger-shards 1",
              flush=True)
        side_by_side(off, measure(args, balances=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
