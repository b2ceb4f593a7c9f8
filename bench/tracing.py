"""What tracing costs: end-to-end throughput with tracing off, with the default sampler,
and with every order sampled.

The same setup as bench/e2e.py (a real nats-server, one engine process, one gateway
process, this process as the load generator, `result` mode at saturation), run three
times with a different ``OTEL_*`` environment for the engine and gateway. Spans go over
OTLP/HTTP to a real collector (rotel, exporting to a black hole), so exporting costs
what it costs. The load generator sends no trace context: the gateway is where each
order's trace starts, as for any NATS client that does not trace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

from e2e import MARKET, collector, drain, saturate, trader_accounts, trader_connections
from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets, wait_ready
from tradeplane_engine.streams import StreamSettings

CONFIGURATIONS = {
    "tracing off": {},
    "default sampler (parent-based, 1%)": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    "every order sampled": {"OTEL_TRACES_SAMPLER": "always_on"},
}


async def measure(url: str, seconds: float, clients: int, in_flight: int) -> float:
    connections = await trader_connections(url, trader_accounts(clients))
    try:
        await saturate(connections, "result", 1.0, 64)  # warm up
        await drain(connections[0])
        runs = []
        for _ in range(3):
            run = await saturate(connections, "result", seconds, in_flight)
            await drain(connections[0])
            if run.errors or not run.ok:
                raise SystemExit(f"{run.errors} of {run.sent} orders failed: no figure")
            runs.append(run.sustained)
        return statistics.median(runs)
    finally:
        for nc in connections:
            await nc.close()


def run_one(directory: Path, endpoint: str, extra: dict[str, str],
            args: argparse.Namespace) -> float:
    """One configuration on a fresh nats-server (the same empty streams for each)."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    if extra:
        environ.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", **extra})
    with NatsServer(directory).start() as server:
        asyncio.run(publish_markets(server.url, [MARKET], StreamSettings()))
        engine = spawn(tradeplane_command("--nats", server.url, "engine", "--market",
                                          MARKET.name), env=environ)
        gateway = spawn(tradeplane_command("--nats", server.url, "gateway"), env=environ)
        try:
            asyncio.run(wait_ready(server.url, [MARKET.name], [engine, gateway]))
            return uvloop.run(measure(server.url, args.seconds, args.clients, args.in_flight))
        finally:
            stop(gateway)
            stop(engine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=256)
    args = parser.parse_args()
    print("tracing cost: `result` mode at saturation, median of 3 runs of "
          f"{args.seconds:.0f} s each, engine + gateway + nats-server + load generator on "
          "this machine", flush=True)
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory:
        data = Path(directory)
        rotel, endpoint = collector(data)
        figures: dict[str, float] = {}
        try:
            for name, extra in CONFIGURATIONS.items():
                figures[name] = run_one(data / f"nats-{len(figures)}", endpoint, extra, args)
                base = figures["tracing off"]
                cost = "" if name == "tracing off" else (
                    f"  ({(base - figures[name]) / base:+.1%} cost)")
                print(f"  {name:38s} {figures[name]:8,.0f} orders/s{cost}", flush=True)
        finally:
            rotel.terminate()
            rotel.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
