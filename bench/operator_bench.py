"""Operator benchmark: how fast Markets become children, and what the operator costs the
API server while nothing changes.

The operator runs in-process with kopf against the emulated API server of the tests
(tests/support/kube.py) and a real nats-server; no engine runs, so this measures the
operator alone. Figures:

- time from creating N Markets at once until every one has its StatefulSet, Service,
  PodDisruptionBudget and definition;
- API requests per Market per minute at rest (status timer, drift check), with replica
  reports that do not change, then with reports that change every second (lag moving);
- time from a deleted StatefulSet to its replacement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from nats.js.errors import BucketNotFoundError, NoKeysError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.operator_.harness import World, market_manifest, operator_world
from tests.support.exchange import eventually

from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.wire import MARKETS_BUCKET
from tradeplane_operator.kube import STATEFULSETS


def names(count: int) -> list[str]:
    return [f"m{index:03d}-usdt" for index in range(count)]


async def defined(world: World, markets: list[str]) -> bool:
    try:
        kv = await world.nc.jetstream().key_value(MARKETS_BUCKET)
        return len(await kv.keys()) == len(markets)
    except (BucketNotFoundError, NoKeysError):
        return False


async def publish_reports(world: World, markets: list[str], sequence: int) -> None:
    js = world.nc.jetstream()
    leases = await leases_bucket(js, 1, True)
    reports = await replicas_bucket(js, 1, True)
    for market in markets:
        await leases.put(market, json.dumps({"holder": f"{market}-engine-0",
                                             "epoch": 1}).encode())
        for ordinal in range(2):
            await reports.put(f"{market}.{market}-engine-{ordinal}", json.dumps({
                "replica": f"{market}-engine-{ordinal}",
                "role": "leader" if ordinal == 0 else "standby", "epoch": 1,
                "ready": True, "sequence": sequence, "lag": sequence % 7,
                "mode": "open"}).encode())


async def requests_per_market_minute(world: World, markets: list[str], seconds: float,
                                     moving: bool) -> float:
    start = world.cluster.emulator.served
    deadline = time.monotonic() + seconds
    sequence = 1
    while time.monotonic() < deadline:
        if moving:
            sequence += 1
        await publish_reports(world, markets, sequence)
        await asyncio.sleep(1.0)
    count = world.cluster.emulator.served - start
    return count / len(markets) / (seconds / 60)


async def main(count: int, seconds: float) -> None:
    markets = names(count)
    with tempfile.TemporaryDirectory() as directory:
        async with operator_world(Path(directory), status_interval=2.0,
                                  drift_interval=30.0) as world:
            started = time.perf_counter()
            await asyncio.gather(*(world.apply(market_manifest(name)) for name in markets))
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets"))
                             == count, 120, "every child")
            await eventually(lambda: defined(world, markets), 120, "every definition")
            made = time.perf_counter() - started
            print(f"{count} Markets created at once: every child and definition in "
                  f"{made:.2f} s ({made / count * 1000:.0f} ms per Market)")

            await publish_reports(world, markets, 1)
            await asyncio.sleep(5)  # the first status writes
            still = await requests_per_market_minute(world, markets, seconds, moving=False)
            print(f"at rest, reports unchanged: {still:.1f} API requests per Market per "
                  f"minute (status every 2 s, drift check every 30 s)")
            moving = await requests_per_market_minute(world, markets, seconds, moving=True)
            print(f"at rest, reports changing every second: {moving:.1f} API requests per "
                  "Market per minute")

            target = f"{markets[0]}-engine"
            old = world.cluster.get("statefulsets", target)
            assert old is not None
            started = time.perf_counter()
            await world.kube.delete(STATEFULSETS, "default", target)
            await eventually(lambda: (world.cluster.get("statefulsets", target) or {}).get(
                "metadata", {}).get("uid") not in (None, old["metadata"]["uid"]), 30,
                "the replacement")
            print(f"a deleted StatefulSet is back in "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    arguments = parser.parse_args()
    uvloop.run(main(arguments.markets, arguments.seconds))
