"""Failover benchmark: how long a market stops when its leader dies, or hands over.

A real nats-server, two engine replicas of one market and a gateway, each its own
process, with orders flowing (``ack`` mode, about 500 a second). Then, repeatedly:
``kill -9`` of the leader, timed from the kill to the first events message published
under the next epoch (the ``Tp-Epoch`` header says which leader wrote it); the killed
replica is started again as a standby before the next round. Last, planned
switchovers: the pause is the gap between the last events message of the old epoch
and the first of the new one, with orders still flowing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets, wait_ready
from tradeplane_engine.access import trader_inbox
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import MarketDefinition, api_subject, engine_subject, event_subject

MARKET = MarketDefinition(name="fail-usdt", base="FAIL", quote="USDT", tick_size="0.01",
                          lot_size="0.01")
STALL = 30.0
"""Seconds without the next leader's first events message before the benchmark stops."""


class Observer:
    """Watches the events stream's messages: when each epoch first and last wrote."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    async def on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        epoch = int((msg.headers or {}).get("Tp-Epoch", "0"))
        self.first.setdefault(epoch, now)
        self.last[epoch] = now


async def status(nc: Client, subject: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = msgspec.json.decode(
            (await nc.request(subject, b"", timeout=1.0)).data)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    return result


async def flow(traders: list[Client], stop_flow: asyncio.Event) -> None:
    """Orders from two traders in turn, each on its own connection: a gateway answers a
    trader's request only on the trader's own inbox (docs/security.md)."""
    number = 0
    while not stop_flow.is_set():
        number += 1
        side = "buy" if number % 2 else "sell"
        body = {"market": MARKET.name, "side": side, "quantity": "1",
                "price": str(100 + number % 5 - 2), "response": "ack"}
        with contextlib.suppress(nats.errors.Error):
            await traders[number % 2].request(api_subject(f"trader{number % 2}", "place"),
                                              msgspec.json.encode(body), timeout=5)
        await asyncio.sleep(0.002)


async def first_event_of(observer: Observer, epoch: int, what: str) -> None:
    """Wait for the first events message under ``epoch``; stop the benchmark, saying
    so, if none comes within ``STALL`` seconds (no orders flowing, or no takeover)."""
    deadline = time.perf_counter() + STALL
    while epoch not in observer.first:
        if time.perf_counter() > deadline:
            raise SystemExit(f"failover benchmark: no events message under epoch {epoch} "
                             f"within {STALL:.0f} s after the {what}")
        await asyncio.sleep(0.001)


async def benchmark(url: str, engines: dict[str, Any], kills: int,
                    switchovers: int) -> None:
    nc = await nats.connect(url)
    traders = [await nats.connect(url, inbox_prefix=trader_inbox(f"trader{number}"))
               for number in range(2)]
    observer = Observer()
    await nc.subscribe(event_subject(MARKET.name), cb=observer.on_event)
    stop_flow = asyncio.Event()
    load = asyncio.create_task(flow(traders, stop_flow))

    async def leader() -> dict[str, Any]:
        while (found := await status(nc, engine_subject(MARKET.name, "status"))) is None:
            await asyncio.sleep(0.01)
        return found

    async def standby_ready(name: str) -> None:
        while True:
            found = await status(nc, engine_subject(MARKET.name, f"{name}.status"))
            if found is not None and found["ready"] and found["role"] == "standby":
                return
            await asyncio.sleep(0.05)

    failover_times = []
    for _ in range(kills):
        current = await leader()
        name = current["replica"]
        await asyncio.sleep(0.5)  # orders flowing under this leader
        killed_at = time.perf_counter()
        engines[name].send_signal(signal.SIGKILL)
        engines[name].wait()
        await first_event_of(observer, current["epoch"] + 1, "kill")
        failover_times.append(observer.first[current["epoch"] + 1] - killed_at)
        engines[name] = spawn(tradeplane_command("--nats", url, "engine", "--market",
                                                 MARKET.name, "--replica", name))
        await standby_ready(name)
    pauses = []
    for _ in range(switchovers):
        current = await leader()
        await asyncio.sleep(0.5)
        target = next(name for name in engines if name != current["replica"])
        answer = msgspec.json.decode((await nc.request(
            engine_subject(MARKET.name, "switchover"), msgspec.json.encode({"to": target}),
            timeout=10)).data)
        if "error" in answer:
            raise RuntimeError(f"switchover to {target} refused: {answer['error']}")
        await first_event_of(observer, current["epoch"] + 1, "switchover")
        await asyncio.sleep(0.2)
        pauses.append(observer.first[current["epoch"] + 1] - observer.last[current["epoch"]])
    stop_flow.set()
    await load
    for connection in (nc, *traders):
        await connection.close()
    print(f"failover, kill -9 of the leader to the first event of the next leader, "
          f"{kills} kills: p50 {statistics.median(failover_times) * 1e3:.0f} ms, "
          f"max {max(failover_times) * 1e3:.0f} ms, min {min(failover_times) * 1e3:.0f} ms",
          flush=True)
    print(f"planned switchover, gap in the events stream, {switchovers} switchovers: "
          f"p50 {statistics.median(pauses) * 1e3:.1f} ms, max {max(pauses) * 1e3:.1f} ms",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--switchovers", type=int, default=10)
    args = parser.parse_args()
    print("failover: two engine replicas, a gateway and nats-server, each its own process; "
          "lease renewed every 0.1 s, lapsed after 0.5 s", flush=True)
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory, \
            NatsServer(Path(directory) / "nats") as server:
        asyncio.run(publish_markets(server.url, [MARKET], StreamSettings()))
        engines = {name: spawn(tradeplane_command("--nats", server.url, "engine",
                                                  "--market", MARKET.name, "--replica", name))
                   for name in ("engine-a", "engine-b")}
        gateway = spawn(tradeplane_command("--nats", server.url, "gateway"))
        try:
            asyncio.run(wait_ready(server.url, [MARKET.name], [*engines.values(), gateway]))
            uvloop.run(benchmark(server.url, engines, args.kills, args.switchovers))
        finally:
            stop(gateway)
            for process in engines.values():
                stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
