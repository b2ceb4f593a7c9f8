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

Every process traces at the default sampler (parent-based, 1%) and exports its spans
over OTLP to a real collector (rotel, dropping them), as a deployment with tracing runs;
``--no-tracing`` runs without.

Everything shares the machine's cores: nats-server, engine, gateway (ledger), the
collector and this load generator. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.otlp import _rotel_binary, _rotel_environment

from tradeplane.ledger_tools import submit
from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets, wait_ready
from tradeplane.up_ledger import asset_decimals, wait_for_ledger
from tradeplane_engine.access import Access, trader_inbox
from tradeplane_engine.ledger import DefineAsset, Deposit, Refused
from tradeplane_engine.ledger.amounts import shard_of
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
    """A stream of limit orders around a mid: about half cross, the book stays bounded.
    Over several markets, each gets a buy and a sell in turn."""

    def __init__(self, seed: int, markets: tuple[str, ...] = (MARKET.name,)) -> None:
        self.rng = random.Random(seed)
        self.number = 0
        self.markets = markets
        self.named = NAMED
        self._prefix = os.urandom(6).hex()  # ids new to every run and every process

    def next(self, mode: str) -> tuple[str, bytes]:
        self.number += 1
        side = "buy" if self.number % 2 else "sell"
        offset = self.rng.randint(-20, 20)
        price = 10_000 + (offset if side == "buy" else -offset)
        market = self.markets[(self.number // 2) % len(self.markets)]
        body = {"market": market, "side": side, "quantity": f"{self.rng.randint(1, 9)}",
                "price": f"{price // 100}.{price % 100:02d}", "response": mode,
                "timeInForce": "IOC" if self.number % 10 == 0 else "GTC"}
        if self.named:
            body["clientOrderId"] = f"{self._prefix}-{self.number}"
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
NAMED = False
"""Whether the load generator gives every order its own ``clientOrderId``."""


async def trader_connections(url: str, accounts: list[str]) -> list[Client]:
    """The load generator's connections, one per account, each acting as its account.
    Then the load generator's garbage collections are made rare: they would show up as
    the exchange's latency."""
    connections = []
    for account in accounts:
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024,
                                **ACCESS.options(trader_inbox(account)))
        ACCOUNTS[id(nc)] = account
        connections.append(nc)
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    return connections


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
                   in_flight: int, markets: tuple[str, ...] = (MARKET.name,)) -> Run:
    orders = Orders(seed=1, markets=markets)
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


async def drain(nc: Client, markets: tuple[str, ...] = (MARKET.name,),
                connections: list[Client] | None = None, shards: int = 1) -> float:
    """Wait until each market's engine has applied every sequenced command and, with
    balances, every ledger shard has settled the events of all of them; how long that
    took. For the ledger: one of each shard's accounts (among ``connections``, else
    ``nc``'s) places a marker in each market, an order that cannot trade, and the wait
    lasts until the shard has settled through it (it settles in sequence order, and only
    the events that concern its accounts). The ledger's status answers the administrator
    only: ``ADMIN`` asks it."""
    started = time.perf_counter()
    js = nc.jetstream()
    for market in markets:
        last = (await js.stream_info(command_stream(market))).state.last_seq
        while True:
            status = json.loads((await nc.request(engine_subject(market, "status"), b"",
                                                  timeout=5)).data)
            if status["sequence"] >= last:
                break
            await asyncio.sleep(0.01)
    admin = ADMIN
    if admin is None:
        return time.perf_counter() - started
    by_shard = {shard_of(ACCOUNTS[id(client)], shards): client
                for client in reversed(connections or [nc])}
    deadline = time.perf_counter() + 120
    for shard, client in sorted(by_shard.items()):
        for market in markets:
            body = {"market": market, "side": "buy", "quantity": "1", "price": "1.00",
                    "response": "ack", "timeInForce": "IOC"}
            marker = json.loads((await client.request(
                api_subject(ACCOUNTS[id(client)], "place"), json.dumps(body).encode(),
                timeout=30)).data)
            if not marker.get("ok"):
                raise SystemExit(f"draining: the marker order was refused: {marker}")
            while True:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"ledger shard {shard} did not settle {market}'s "
                                     "events in 120 s")
                try:  # a ledger with a backlog may answer late: its loop is busy with it
                    ledger = json.loads((await admin.request(
                        ledger_subject(shard, "status"), b"", timeout=5)).data)
                except nats.errors.TimeoutError:
                    continue
                if ledger["settled"].get(market, 0) >= marker["sequence"]:
                    break
                await asyncio.sleep(0.01)
    return time.perf_counter() - started


class CpuMeter:
    """CPU seconds used by each process of the exchange, from /proc (Linux), and the time
    its threads spent ready to run but waiting for a core (``schedstat``)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self.read()
        self._waited = self.waits()

    def waits(self) -> dict[str, float]:
        """Seconds each process's threads have waited for a core, in all."""
        waited = {}
        for name, pid in self.processes.items():
            total = 0
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    total += int(stat.read_text().split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # a thread that ended, or no scheduler statistics
            waited[name] = total / 1e9
        return waited

    def waited_per_order(self, orders: int) -> str:
        """Microseconds each process waited for a core per order since the last call."""
        now = self.waits()
        before, self._waited = self._waited, now
        if not orders or not any(now.values()):
            return ""
        return "  waiting for a core per order: " + ", ".join(
            f"{name} {(now[name] - before.get(name, 0.0)) / orders * 1e6:.0f} µs"
            for name in self.processes)

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
    limit: float = float("nan")
    """The JetStream async publish rate measured in the same run (msg/s)."""
    floor_p99: float = float("nan")
    """The bare JetStream publish's p99 at half the sustained rate (seconds)."""
    quarter_cpu: dict[str, float] = field(default_factory=dict)
    """µs of CPU per order in each process at a quarter of the sustained rate."""


STREAM_KINDS = {"tp-cmd-": "market commands", "tp-evt-": "market events",
                "tp-ledger-cmd-": "ledger commands", "tp-ledger-evt-": "ledger events"}
"""The exchange's streams by the prefix of their names (the longest that matches)."""


class MessageMeter:
    """Messages and bytes into and out of nats-server (its ``/varz`` counters), and the
    bytes its streams stored (``/jsz``), per order."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self._start = self.read()

    def read(self) -> dict[str, int]:
        _, varz = self.server.monitor("varz")
        counters = {key: int(varz[key])
                    for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
        _, jsz = self.server.monitor("jsz?streams=true")
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                kind = max((prefix for prefix in STREAM_KINDS
                            if stream["name"].startswith(prefix)), key=len, default=None)
                if kind is not None:
                    name = STREAM_KINDS[kind]
                    counters[name] = counters.get(name, 0) + int(stream["state"]["bytes"])
        return counters

    def restart(self) -> None:
        self._start = self.read()

    def per_order(self, orders: int) -> dict[str, float]:
        """Each counter's growth per order since the last call (NaN without orders)."""
        now = self.read()
        grown = {key: (value - self._start.get(key, 0)) / orders if orders else float("nan")
                 for key, value in now.items()}
        self._start = now
        return grown


def traffic_text(carried: dict[str, float]) -> str:
    stored = ", ".join(f"{kind} {carried[kind]:,.0f}" for kind in STREAM_KINDS.values()
                       if kind in carried)
    return (f"  NATS messages per order: {carried['in_msgs']:.2f} into nats-server, "
            f"{carried['out_msgs']:.2f} out of it (a request and its reply alone: 2 and 2)\n"
            f"  NATS bytes per order: {carried['in_bytes']:,.0f} into nats-server, "
            f"{carried['out_bytes']:,.0f} out of it; stored in streams: {stored}")


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
    connections = await trader_connections(url, trader_accounts(args.clients))
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
            print(cpu.waited_per_order(top.ok), flush=True)
            print(traffic_text(carried), flush=True)
            summary = summaries[mode] = Summary(top.sustained, float("nan"), float("nan"),
                                                used, (carried["in_msgs"],
                                                       carried["out_msgs"]), limit)
            for fraction in fractions:
                run = await open_loop(connections, mode, top.sustained * fraction,
                                      args.seconds)
                backlog = await drain(connections[0])
                print(report(run, limit) + f"  engine backlog drained in {backlog:.1f} s",
                      flush=True)
                used = cpu.figures(run.ok)
                print(cpu_text(used), flush=True)
                print(cpu.waited_per_order(run.ok), flush=True)
                if fraction == 0.25:
                    summary.quarter_cpu = used
                if fraction == 0.5:
                    summary.p50 = run.percentile(0.5)
                    summary.p99 = run.percentile(0.99)
                if mode == "result" and with_floor:
                    floor = await jetstream_open_loop(url, run.offered or 0, args.seconds)
                    print(report(floor, limit) + "  <- the bare JetStream publish, same rate",
                          flush=True)
                    cpu.per_order(1)  # not the exchange's CPU
                    cpu.waited_per_order(1)
                    if fraction == 0.5:
                        summary.floor_p99 = floor.percentile(0.99)
    finally:
        for nc in connections:
            await nc.close()
        if ADMIN is not None:
            await ADMIN.close()
    return summaries


def trader_accounts(count: int, shards: int = 1) -> list[str]:
    """The load generator's ``count`` accounts (one per connection), ``trader<n>``, as
    evenly spread over the ledger's ``shards`` as their number allows."""
    each = -(-count // shards)
    taken: dict[int, int] = {}
    accounts: list[str] = []
    number = 0
    while len(accounts) < count:
        name = f"trader{number}"
        shard = shard_of(name, shards)
        if taken.get(shard, 0) < each:
            taken[shard] = taken.get(shard, 0) + 1
            accounts.append(name)
        number += 1
    return accounts


async def fund_accounts(url: str, access: Access, accounts: list[str],
                        markets: tuple[MarketDefinition, ...] = (MARKET,),
                        shards: int = 1) -> None:
    """Define the markets' assets to every ledger shard and give each load-generator
    account plenty of each at its shard: more than a run can spend, and little enough
    that the shard's totals fit the 64-bit integers of its snapshot (its status hashes
    it)."""
    decimals = asset_decimals(list(markets))
    nc = await nats.connect(url, **access.options())
    try:
        await wait_for_ledger(nc, shards)
        outcomes = [await submit(nc, shard, DefineAsset(0, 0, asset=asset, decimals=places))
                    for shard in range(shards)
                    for asset, places in sorted(decimals.items())]
        outcomes += [await submit(nc, shard_of(account, shards),
                                  Deposit(0, 0, transfer_id=f"bench-{account}-{asset}",
                                          account=account, asset=asset,
                                          amount=10**9 * 10**places))
                     for account in accounts for asset, places in sorted(decimals.items())]
        refused = [event.reason for outcome in outcomes for event in outcome.batch.events
                   if isinstance(event, Refused)]
        if refused:
            raise SystemExit(f"funding the accounts: {refused[0]}")
        # A ledger shard's leader defines a market once its assets are; until then an
        # order is refused (501), so wait until each account's orders are taken.
        for account in accounts:
            for market in markets:
                while not await _funded(url, account, market.name):
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _funded(url: str, account: str, market: str) -> bool:
    """Whether a small order of ``account`` is taken in ``market`` (the market is
    defined to the account's ledger shard)."""
    probe = await nats.connect(url, **ACCESS.options(trader_inbox(account)))
    try:
        body = {"market": market, "side": "buy", "quantity": "1", "price": "1.00",
                "response": "ack", "timeInForce": "IOC"}
        reply = await probe.request(api_subject(account, "place"),
                                    json.dumps(body).encode(), timeout=10)
        return b'"ok":true' in reply.data
    finally:
        await probe.close()


def collector(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """rotel receiving OTLP/HTTP on a free port and dropping everything."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(_rotel_binary()), "start", "--otlp-http-endpoint", f"127.0.0.1:{port}",
         "--otlp-grpc-endpoint", "127.0.0.1:0", "--exporter", "blackhole",
         "--pid-file", str(directory / "rotel.pid"), "--log-file", str(directory / "rotel.log")],
        env=_rotel_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("rotel did not start")


def tracing_environment(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A collector, and the environment that has a process export its traces there at
    the default sampler (parent-based, 1%): as an exchange runs with tracing on."""
    process, endpoint = collector(directory)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    return process, {**environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                     "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


@contextlib.contextmanager
def exchange(args: argparse.Namespace, balances: bool,
             markets: tuple[MarketDefinition, ...] = (MARKET,), gateways: int = 1,
             ) -> Iterator[tuple[NatsServer, dict[str, int]]]:
    """A running exchange: nats-server, an engine process per market and ``gateways``
    gateway processes; with ``balances``, a ledger process per market too (one shard
    each), and the load generator's accounts funded; unless ``args.no_tracing``, every
    process traces at the default sampler to a collector. Yields the server and each
    process's pid by name (the load generator's own included); stops them all."""
    global ACCESS, NAMED
    shards = len(markets) if balances else 0
    NAMED = args.named
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory:
        data = Path(directory)
        nats_server = (NatsServer(data / "nats", monitoring=True) if args.no_auth else
                       NatsServer.secured(data / "nats", monitoring=True))
        print("NATS authentication and permissions: "
              f"{'off (--no-auth)' if args.no_auth else 'on (docs/security.md)'}", flush=True)
        print("tracing: " + ("off (--no-tracing)" if args.no_tracing else
                             "the default sampler (parent-based, 1%), exported over OTLP "
                             "to a collector"), flush=True)
        print("orders: " + ("each under a clientOrderId of the trader's (--named)" if NAMED
                            else "named by the gateway (no clientOrderId)"), flush=True)
        with contextlib.ExitStack() as stack:
            environ = None
            if not args.no_tracing:
                receiver, environ = tracing_environment(data)
                stack.callback(_stop_collector, receiver)
            server = stack.enter_context(nats_server.start())
            ACCESS = server.access("admin")  # the load generator acts as its accounts

            def service(identity: str, *command: str) -> subprocess.Popen[bytes]:
                credentials = ([] if server.secrets is None else
                               ["--credentials", str(server.secrets.credentials(identity))])
                return spawn(tradeplane_command("--nats", server.url, *credentials, *command),
                             env=environ)

            def named(kind: str, number: int, count: int) -> str:
                return kind if count == 1 else f"{kind} {number}"

            asyncio.run(publish_markets(server.url, list(markets), StreamSettings(), ACCESS))
            children: dict[str, subprocess.Popen[bytes]] = {}
            try:
                for number, market in enumerate(markets):
                    children[named("engine", number, len(markets))] = service(
                        "engine", "engine", "--market", market.name)
                for shard in range(shards):
                    children[named("ledger", shard, shards)] = service(
                        "ledger", "ledger", "--shard", str(shard), "--shards", str(shards))
                for number in range(gateways):
                    children[named("gateway", number, gateways)] = service(
                        "gateway", "gateway",
                        *(["--ledger-shards", str(shards)] if shards else []))
                asyncio.run(wait_ready(server.url, [market.name for market in markets],
                                       list(children.values()), access=ACCESS))
                if balances:
                    asyncio.run(fund_accounts(server.url, ACCESS,
                                              trader_accounts(args.clients, shards), markets,
                                              shards))
                assert server.process is not None
                yield server, {"nats-server": server.process.pid,
                               **{name: child.pid for name, child in children.items()},
                               "load generator": os.getpid()}
            finally:
                for child in reversed(children.values()):
                    stop(child)


def _stop_collector(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(10)


def measure(args: argparse.Namespace, balances: bool) -> dict[str, Summary]:
    """Start an exchange (nats-server, an engine, a gateway; with ``balances``, a ledger
    shard too), measure it, stop it."""
    with exchange(args, balances) as (server, processes):
        if not balances:
            return uvloop.run(benchmark(server.url, args, processes, server))
        # What the targets need (a quarter and half the rate, the bare publish beside
        # them), and no more: balances on is the exchange they are set for.
        return uvloop.run(benchmark(server.url, args, processes, server,
                                    fractions=(0.25, 0.5)))


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


TARGETS = (
    ("sustained orders/s ÷ the JetStream publish rate", ">=", 0.5, "{:.2f}"),
    ("p99 at half the rate ÷ the bare publish's p99", "<=", 3.0, "{:.1f}"),
    ("exchange CPU µs per order at saturation", "<=", 100.0, "{:.0f}"),
    ("exchange CPU µs per order at a quarter of it", "<=", 300.0, "{:.0f}"),
)
"""The end-to-end targets (docs/performance.md, Against the targets), in ``result``
mode; the fourth, the engine core against Liquibook, is ``bench/run.py``'s ratio."""


def targets(summary: Summary, exchange: str) -> None:
    """Each end-to-end target, what this run measured for it, and whether it is met."""
    measured = (summary.sustained / summary.limit, summary.p99 / summary.floor_p99,
                _exchange(summary.cpu), _exchange(summary.quarter_cpu) or float("nan"))
    print()
    print(f"the end-to-end targets, `result` mode, {exchange} (the engine core against "
          "Liquibook: bench/run.py)")
    for (label, way, bound, form), value in zip(TARGETS, measured, strict=True):
        if math.isnan(value):
            verdict, shown = "not measured", "-"
        else:
            met = value >= bound if way == ">=" else value <= bound
            verdict, shown = ("met" if met else "not met"), form.format(value)
        print(f"  {label:<48}{shown:>8}  (target {way.replace('>=', '≥').replace('<=', '≤')} "
              f"{form.format(bound)})  {verdict}", flush=True)


def _exchange(cpu: dict[str, float]) -> float:
    """CPU per order of the exchange's own processes (not the load generator's)."""
    return sum(used for name, used in cpu.items() if name != "load generator")


def load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of an exchange under load, this benchmark's and ``bench/scaling.py``'s."""
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--clients", type=int, default=4, help="NATS connections")
    parser.add_argument("--in-flight", type=int, default=256,
                        help="outstanding requests at saturation")
    parser.add_argument("--no-auth", action="store_true",
                        help="run NATS without authentication (to measure what auth costs)")
    parser.add_argument("--no-tracing", action="store_true",
                        help="no tracing (by default every process traces at the default "
                             "sampler and exports to a collector)")
    parser.add_argument("--named", action="store_true",
                        help="every order under a clientOrderId of the trader's, as trading "
                             "clients send them (by default the gateway names them)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_arguments(parser)
    parser.add_argument("--limit-messages", type=int, default=50_000)
    parser.add_argument("--balances", action="store_true",
                        help="measure again with balances on (a ledger shard) and print "
                             "both side by side")
    args = parser.parse_args()
    print(f"end to end: {args.clients} client connections, one engine process, one gateway "
          f"process, nats-server, all on this machine; {args.seconds:.0f} s per run",
          flush=True)
    off = measure(args, balances=False)
    tracing = ("tracing off" if args.no_tracing else "tracing on") + (
        ", authentication off" if args.no_auth else "")
    targets(off["result"], f"balances off, {tracing}")
    if args.balances:
        print()
        print("with balances: one ledger process (tradeplane ledger --shards 1) funds every "
              "order and settles its market's events; the gateway with --ledger-shards 1",
              flush=True)
        on = measure(args, balances=True)
        side_by_side(off, on)
        targets(on["result"], f"balances on, {tracing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
