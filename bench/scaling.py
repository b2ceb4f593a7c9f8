"""Scaling benchmark: the exchange with more engine and gateway processes on one machine.

Capacity grows by adding processes: each market has its own engine process, gateways
share the order entry in one queue group and, with balances, each ledger shard is its
own process. This runs the end-to-end load (``bench/e2e.py``'s orders, its load
generator, nats-server with file storage and authentication) on exchanges of 1, 2 and 4
of each: that many markets, each with its engine, that many gateways and, with
``--balances``, that many ledger shards. The load generator spreads its orders evenly
over the markets (a buy and a sell to each in turn) from the same connections and the
same number of requests in flight in every configuration.

For each configuration and response mode, at saturation: the sustained orders/s, and
per engine and per gateway; the latency; the CPU per order of each kind of process (the
sum over its processes: what that tier spends on an order) and how much of a core
each process used; and, from those, each tier's orders per CPU-second at the load each
of its processes had (a busier process batches more, so this is not a ceiling).

Everything shares the machine's cores. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import msgspec
import nats
import uvloop

import e2e
from tradeplane.processes import NatsServer
from tradeplane_engine.wire import MarketDefinition

KINDS = ("nats-server", "engine", "gateway", "ledger", "load generator")


def markets(count: int) -> tuple[MarketDefinition, ...]:
    """``count`` markets like the end-to-end benchmark's, each on assets of its own."""
    if count == 1:
        return (e2e.MARKET,)
    return tuple(msgspec.structs.replace(e2e.MARKET, name=f"bench{number}-usdt",
                                         base=f"BENCH{number}")
                 for number in range(count))


@dataclass
class Figures:
    """One configuration's run in one response mode, at saturation."""

    processes: int
    mode: str
    sustained: float
    p50: float
    p99: float
    cpu: dict[str, float]
    """µs of CPU per order of each process."""
    orders: int
    seconds: float
    """How long the orders took, with the wait for the last to be applied and settled:
    the time over which ``cpu`` was measured."""

    def tier(self, kind: str) -> float:
        """µs of CPU per order of every process of ``kind`` together."""
        return sum(used for name, used in self.cpu.items()
                   if name == kind or name.startswith(f"{kind} "))

    def core_share(self, name: str) -> float:
        """The share of one core process ``name`` used during the run."""
        return self.cpu[name] * self.orders / self.seconds / 1e6


async def saturation(server: NatsServer, processes: dict[str, int], names: tuple[str, ...],
                     args: argparse.Namespace, count: int, shards: int) -> list[Figures]:
    e2e.ADMIN = await nats.connect(server.url, **e2e.ACCESS.options()) if shards else None
    connections = await e2e.trader_connections(
        server.url, e2e.trader_accounts(args.clients, max(shards, 1)))
    figures = []
    try:
        await e2e.saturate(connections, "result", 1.0, 64, names)  # warm up
        await e2e.drain(connections[0], names, connections, shards)
        cpu = e2e.CpuMeter(processes)
        for mode in ("ack", "result"):
            top = await e2e.saturate(connections, mode, args.seconds, args.in_flight, names)
            backlog = await e2e.drain(connections[0], names, connections, shards)
            used = cpu.figures(top.ok)
            print(f"  {mode:<6} sustained {top.sustained:>8,.0f}/s  p50 "
                  f"{top.percentile(0.5) * 1e3:6.2f} ms  p99 {top.percentile(0.99) * 1e3:7.2f}"
                  f" ms  errors {top.errors}  backlog drained in {backlog:.1f} s", flush=True)
            print(e2e.cpu_text(used), flush=True)
            figures.append(Figures(count, mode, top.sustained, top.percentile(0.5),
                                   top.percentile(0.99), used, top.ok,
                                   top.seconds + backlog))
            shares = ", ".join(f"{name} {figures[-1].core_share(name):.0%}" for name in used)
            print(f"  share of a core: {shares}", flush=True)
    finally:
        for nc in connections:
            await nc.close()
        if e2e.ADMIN is not None:
            await e2e.ADMIN.close()
            e2e.ADMIN = None
    return figures


def measure(args: argparse.Namespace, count: int) -> list[Figures]:
    chosen = markets(count)
    shards = count if args.balances else 0
    print(f"\n{count} market(s), an engine process each; {count} gateway process(es)"
          + (f"; {shards} ledger shard process(es)" if shards else ""), flush=True)
    with e2e.exchange(args, args.balances, chosen, gateways=count) as (server, processes):
        return uvloop.run(saturation(server, processes, tuple(m.name for m in chosen), args,
                                     count, shards))


def summary(runs: list[Figures]) -> None:
    print("\nsaturation, side by side (CPU per order: each tier's processes together; "
          "orders per CPU-second: 1 s ÷ that CPU, at the load each process had)")
    counts = sorted({run.processes for run in runs})
    header = "".join(f"{f'{count} of each':>14}" for count in counts)
    for mode in ("ack", "result"):
        by_count = {run.processes: run for run in runs if run.mode == mode}
        rows: list[tuple[str, list[str]]] = [
            (f"{mode}: sustained orders/s",
             [f"{by_count[c].sustained:,.0f}" for c in counts]),
            (f"{mode}: per engine, per gateway",
             [f"{by_count[c].sustained / c:,.0f}" for c in counts]),
            (f"{mode}: p99 ms", [f"{by_count[c].p99 * 1e3:.1f}" for c in counts])]
        for kind in KINDS:
            if not any(by_count[c].tier(kind) for c in counts):
                continue
            rows.append((f"{mode}: CPU µs/order, {kind}",
                         [f"{by_count[c].tier(kind):.0f}" for c in counts]))
            if kind in ("engine", "gateway", "ledger"):
                rows.append((f"{mode}: orders per CPU-second, {kind}",
                             [f"{1e6 / by_count[c].tier(kind):,.0f}" for c in counts]))
        rows.append((f"{mode}: CPU µs/order, exchange",
                     [f"{sum(by_count[c].tier(k) for k in KINDS[:-1]):.0f}"
                      for c in counts]))
        print(f"  {'':<40}{header}")
        for label, values in rows:
            print(f"  {label:<40}" + "".join(f"{value:>14}" for value in values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    e2e.load_arguments(parser)
    parser.add_argument("--processes", default="1,2,4",
                        help="configurations: how many of each process, comma-separated")
    parser.add_argument("--balances", action="store_true",
                        help="balances on: a ledger shard process per market too")
    args = parser.parse_args()
    print(f"scaling: {args.clients} client connections, {args.in_flight} requests in "
          f"flight, balances {'on' if args.balances else 'off'}, all on this machine "
          f"({len(os.sched_getaffinity(0))} CPUs); {args.seconds:.0f} s per run",
          flush=True)
    runs = [figure for count in (int(part) for part in args.processes.split(","))
            for figure in measure(args, count)]
    summary(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
