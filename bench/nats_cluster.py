"""NATS cluster benchmark: what losing NATS nodes costs the exchange.

Three real nats-servers in one JetStream cluster, a market whose streams and buckets
have three replicas, two engine replicas and a gateway, each its own process, with
orders sent at a steady pace (each without waiting for the one before; ``ack`` mode).
Each round first moves the leaders of the market's streams and buckets (a leader
stepdown naming the node preferred) so that one node leads what the round is about —
the command stream, the events stream, the lease bucket, or none of them — then
``kill -9``s it, and measures the longest time without an acknowledged order and
without an events message (the leader's output: fills, trades, replies), and the
orders not acknowledged; the node is then started again and timed until it is healthy
with every stream current. JetStream's meta leader and the consumers stay where
JetStream put them (each round says what the node led). Last, two nodes at once (no
quorum): how long after one returns orders are acknowledged again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats
import nats.errors
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from tradeplane.processes import NatsCluster, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets, wait_ready
from tradeplane_engine.access import trader_inbox
from tradeplane_engine.connection import server_urls
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import (
    LEASES_BUCKET,
    MARKETS_BUCKET,
    REPLICAS_BUCKET,
    MarketDefinition,
    api_subject,
    bucket_stream,
    command_stream,
    event_stream,
    event_subject,
)

MARKET = MarketDefinition(name="ha-usdt", base="HA", quote="USDT", tick_size="0.01",
                          lot_size="0.01")
COMMANDS = command_stream(MARKET.name)
EVENTS = event_stream(MARKET.name)
NAMES = {COMMANDS: "commands", EVENTS: "events", "meta": "meta",
         bucket_stream(LEASES_BUCKET): "leases", bucket_stream(MARKETS_BUCKET): "markets",
         bucket_stream(REPLICAS_BUCKET): "replicas"}
"""What a node may lead, as the figures name it (``/`` in a name: a consumer)."""
STREAMS = [stream for stream in NAMES if stream != "meta"]
PACE = 0.01
"""Seconds between two orders sent (about 100 a second)."""
REQUEST_TIMEOUT = 10.0


class Load:
    """Orders at a steady pace, each in its own task; when each was acknowledged or
    failed, and when each events message went by."""

    def __init__(self, traders: list[Client]) -> None:
        self.traders = traders
        self.acknowledged: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self.events: list[float] = []
        self.in_flight: set[asyncio.Task[None]] = set()

    async def on_event(self, _msg: Msg) -> None:
        self.events.append(time.monotonic())

    async def _place(self, number: int) -> None:
        body = {"market": MARKET.name, "side": "buy" if number % 2 else "sell",
                "quantity": "1", "price": str(100 + number % 5 - 2), "response": "ack"}
        try:
            answer = await self.traders[number % 2].request(
                api_subject(f"trader{number % 2}", "place"), msgspec.json.encode(body),
                timeout=REQUEST_TIMEOUT)
        except nats.errors.Error as exc:
            self.failed.append((time.monotonic(), type(exc).__name__))
            return
        reply = msgspec.json.decode(answer.data)
        if reply.get("ok"):
            self.acknowledged.append(time.monotonic())
        else:
            self.failed.append((time.monotonic(), f"{reply.get('code')} {reply.get('error')}"))

    async def run(self) -> None:
        for number in itertools.count(1):
            task = asyncio.create_task(self._place(number))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            await asyncio.sleep(PACE)  # the pace of the load

    async def acknowledged_after(self, moment: float, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for at in self.acknowledged[-count:] if at > moment) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} acknowledgements after the failure; "
                                   f"failures: {self.failed[-3:]}")
            await asyncio.sleep(0.01)


def longest_gap(times: list[float], since: float, until: float) -> float:
    inside = [since, *(moment for moment in times if since < moment < until), until]
    return max(later - earlier for earlier, later in itertools.pairwise(inside))


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll a blocking condition (in a thread, so the load goes on) until it holds; when."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
    return time.monotonic()


async def healthy(nodes: NatsCluster) -> None:
    await until(lambda: all(node.healthy() for node in nodes.nodes), 60, "every node healthy")
    await until(lambda: all(nodes.current(stream) for stream in STREAMS), 60,
                "every stream current")


async def place(nc: Client, nodes: NatsCluster, stream: str, target: str) -> None:
    """Make ``target`` the leader of ``stream`` (a leader stepdown naming it preferred)."""
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(nodes.leaders)).get(stream) != target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} leading {stream}")
        with contextlib.suppress(nats.errors.Error):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", msgspec.json.encode(
                {"placement": {"preferred": target}}), timeout=5)
        await asyncio.sleep(0.2)


Round = tuple[float, float, int, float, str]


async def one_node(nc: Client, nodes: NatsCluster, load: Load, kind: str,
                   victim: str) -> Round:
    """Make ``victim`` lead what ``kind`` names (``follower``: nothing of the market's
    streams and buckets) and the others the rest, then kill it; (acknowledgement gap,
    events gap, orders not acknowledged, seconds until healthy again, what it led)."""
    await healthy(nodes)
    others = [node.membership.server_name for node in nodes.nodes
              if node.membership is not None and node.membership.server_name != victim]
    for index, stream in enumerate(STREAMS):
        await place(nc, nodes, stream, victim if NAMES[stream] == kind
                    else others[index % len(others)])
    await load.acknowledged_after(time.monotonic(), 50)
    leaders = await asyncio.to_thread(nodes.leaders)
    failed_before = len(load.failed)
    killed_at = time.monotonic()
    nodes.node(victim).kill()
    await load.acknowledged_after(killed_at, 100)
    events = len(load.events)
    while len(load.events) == events:  # an events message after the acknowledgements
        await asyncio.sleep(0.01)
    resumed_at = time.monotonic()
    pending = set(load.in_flight)
    restarted_at = time.monotonic()
    nodes.node(victim).start()
    caught_up = await until(lambda: nodes.node(victim).healthy() and all(
        nodes.current(stream) for stream in STREAMS), 60, f"{victim} caught up") - restarted_at
    await asyncio.gather(*pending)  # every order sent before trading resumed is answered
    led = [key for key, node in leaders.items() if node == victim]
    consumers = sum("/" in key for key in led)
    return (longest_gap(load.acknowledged, killed_at, resumed_at),
            longest_gap(load.events, killed_at, resumed_at),
            len(load.failed) - failed_before, caught_up,
            "+".join([*sorted(NAMES.get(key, key) for key in led if "/" not in key),
                      *([f"{consumers} consumers"] if consumers else [])]) or "nothing")


async def two_nodes(nodes: NatsCluster, load: Load) -> tuple[float, float]:
    """Kill two nodes, wait for a refusal, start one: (seconds to the next acknowledgement,
    to the next events message)."""
    await healthy(nodes)
    leaders = await asyncio.to_thread(nodes.leaders)
    first = leaders[COMMANDS]
    second = next(node.membership.server_name for node in nodes.nodes
                  if node.membership is not None and node.membership.server_name != first)
    refused_before = len(load.failed)
    nodes.node(first).kill()
    nodes.node(second).kill()
    while len(load.failed) == refused_before:
        await asyncio.sleep(0.01)
    restarted_at = time.monotonic()
    nodes.node(second).start()
    await load.acknowledged_after(restarted_at, 1)
    while not load.events or load.events[-1] < restarted_at:
        await asyncio.sleep(0.01)
    acknowledged = min(at for at in load.acknowledged if at > restarted_at) - restarted_at
    evented = min(at for at in load.events if at > restarted_at) - restarted_at
    nodes.node(first).start()
    return acknowledged, evented


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s, "
            f"min {min(values):.2f} s" if values else "no round")


async def benchmark(nodes: NatsCluster, rounds: int) -> None:
    # The gateway answers on the account's own inboxes only.
    async def quiet(_error: Exception) -> None:
        """Connections to a killed node fail: expected here, not news."""

    traders = [await nats.connect(server_urls(nodes.url), max_reconnect_attempts=-1,
                                  inbox_prefix=trader_inbox(f"trader{number}"),
                                  error_cb=quiet)
               for number in range(2)]
    load = Load(traders)
    await traders[0].subscribe(event_subject(MARKET.name), cb=load.on_event)
    sending = asyncio.create_task(load.run())
    try:
        names = [node.membership.server_name for node in nodes.nodes
                 if node.membership is not None]
        for kind in ("follower", "commands", "events", "leases"):
            what = {"follower": "a node leading none of the market's streams and buckets",
                    "commands": "the command stream's leader",
                    "events": "the events stream's leader",
                    "leases": "the lease bucket's leader"}[kind]
            print(f"kill -9 of {what}:", flush=True)
            results = []
            for turn in range(rounds):
                victim = names[turn % len(names)]
                result = await one_node(traders[0], nodes, load, kind, victim)
                results.append(result)
                print(f"  {victim} (leading {result[4]}): without an acknowledgement "
                      f"{result[0]:.2f} s, without an events message {result[1]:.2f} s, "
                      f"{result[2]} orders not acknowledged; back, healthy and current "
                      f"after {result[3]:.2f} s", flush=True)
            print(f"  without an acknowledgement: {summary([r[0] for r in results])}; "
                  f"without an events message: {summary([r[1] for r in results])}",
                  flush=True)
        quorum = [await two_nodes(nodes, load) for _ in range(rounds)]
        print(f"two nodes killed (no quorum: orders refused), one started again, "
              f"{rounds} rounds: acknowledged again after {summary([q[0] for q in quorum])}"
              f"; events again after {summary([q[1] for q in quorum])}", flush=True)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        for trader in traders:
            await trader.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("NATS cluster: three nats-servers, streams and buckets on 3 replicas, two engine "
          "replicas and a gateway, each its own process; about 100 orders a second",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory, \
            NatsCluster(Path(directory) / "nats") as nodes:
        settings = StreamSettings(replicas=3)
        asyncio.run(publish_markets(nodes.url, [MARKET], settings))
        engines = [spawn(tradeplane_command(
            "--nats", nodes.url, "engine", "--market", MARKET.name, "--replica", name,
            "--stream-replicas", "3")) for name in ("engine-a", "engine-b")]
        gateway = spawn(tradeplane_command("--nats", nodes.url, "gateway"))
        try:
            asyncio.run(wait_ready(nodes.url, [MARKET.name], [*engines, gateway]))
            uvloop.run(benchmark(nodes, args.rounds))
        finally:
            stop(gateway)
            for engine in engines:
                stop(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
