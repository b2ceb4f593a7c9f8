"""The exchange on a three-node NATS cluster with every stream and bucket on three
replicas, as docs/production.md recommends, each part a real process: ``kill -9`` of a
node that does not lead the command stream, then of the one that does, each followed
by its return, then of two nodes at once (no quorum) and the return of one.

Orders are sent at a steady pace, each without waiting for the one before (as many
traders would), so that one order stuck on a dead connection does not stop the others.
What each failure costs is measured here and printed (``-s`` shows it): the longest
time without an acknowledgement and without a trade from the kill, the longest an
acknowledged order waited, and what happened to the orders without an acknowledgement.
Nothing acknowledged may be lost and no trade may be recorded twice: the events
stream, PostgreSQL and every replica's state agree at the end. Traders log in through
the auth service (NATS's auth callout) on each node: the accounts work clustered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg

from tests.e2e.cluster import Attempt, Cluster, PacedFlow, cluster
from tests.e2e.test_crash_recovery import MARKET
from tests.e2e.test_failover import check_settled
from tests.support.exchange import eventually, run
from tradeplane.processes import NatsCluster, NatsServer
from tradeplane_engine.store.database import open_database
from tradeplane_engine.wire import command_stream, trades_subject
from tradeplane_gateway import accounts, connect

ROLES = ("engine-1", "engine-2", "recorder", "gateway", "auth")
ORDERS = 100
"""Acknowledged orders that show trading goes on, after each step."""


def outcomes(failed: list[Attempt]) -> str:
    """Unacknowledged orders by what their sender was told: the error's code and the
    reason in brackets, or the exception."""
    kinds: dict[str, int] = {}
    for attempt in failed:
        found = re.match(r"RequestError: (\d+ \w+): [^(]*(\([^)]*\))?", attempt.error)
        kind = (f"{found.group(1)} {found.group(2) or ''}".strip() if found
                else attempt.error[:60])
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{count} × {kind}" for kind, count in sorted(kinds.items())) or "none"


class Trades:
    """When each public trade was seen (``time.monotonic``)."""

    def __init__(self) -> None:
        self.seen_at: list[float] = []

    async def on_trade(self, _msg: Msg) -> None:
        self.seen_at.append(time.monotonic())


def longest_gap(times: list[float], since: float, until: float) -> float:
    """The longest time between ``since`` and ``until`` with nothing in ``times``."""
    inside = [since, *(moment for moment in times if since < moment < until), until]
    return max(later - earlier for earlier, later in itertools.pairwise(inside))


async def stream_leader(nodes: NatsCluster, stream: str) -> str:
    """The server name of the node that leads ``stream`` (waiting for one)."""
    found: dict[str, str] = {}

    async def known() -> bool:
        found.update(await asyncio.to_thread(nodes.leaders))
        return stream in found

    await eventually(known, 30, f"a leader of {stream}")
    return found[stream]


def described(led: list[str]) -> str:
    """What a node leads: the meta group, streams by name, consumers counted."""
    consumers = sum("/" in what for what in led)
    named = sorted(what for what in led if "/" not in what)
    return ", ".join([*named, *([f"{consumers} consumer(s)"] if consumers else [])]) or "nothing"


async def current(nodes: NatsCluster, stream: str) -> None:
    """Until every replica of ``stream`` is current with its leader."""
    await eventually(lambda: asyncio.to_thread(nodes.current, stream), 30,
                     f"every replica of {stream} current")


async def unacknowledged_but_sequenced(exchange: Cluster, flow: PacedFlow) -> str:
    """How many orders whose sender was not told "acknowledged" were sequenced anyway:
    none that the command stream refused (``909 ... (no stream)``: no stream leader took
    it), and maybe some whose answer was lost with a connection (a retry under the same
    client order id finds those, and does not repeat them)."""
    unacknowledged = [attempt for attempt in flow.attempts if not attempt.acknowledged]
    connection = await exchange.database()
    try:
        sequenced = {row["client_order_id"] for row in await connection.fetch(
            "SELECT client_order_id FROM orders WHERE market = $1 "
            "AND client_order_id = ANY($2)", exchange.market,
            [attempt.client_order_id for attempt in unacknowledged])}
    finally:
        await connection.close()
    refused = [attempt for attempt in unacknowledged
               if "NOT_SEQUENCED" in attempt.error and "(no stream)" in attempt.error]
    assert not sequenced & {attempt.client_order_id for attempt in refused}
    return (f"  of {len(unacknowledged)} orders not acknowledged, {len(sequenced)} were "
            f"sequenced anyway, none of the {len(refused)} refused; of "
            f"{len(flow.acknowledged)} acknowledged, none lost")


async def traders(exchange: Cluster, nodes: NatsCluster) -> tuple[str, str]:
    """Two real trader accounts, each admitted by the auth callout on every node."""
    pool = await open_database(exchange.dsn, size=1)
    try:
        secrets = []
        async with pool.acquire() as connection:
            for account in ("buyer", "seller"):
                secrets.append(await accounts.create(connection, account))
    finally:
        await pool.close()
    for node in nodes.nodes:
        async def admitted(node: NatsServer = node) -> bool:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                nc = await nats.connect(node.url, user="buyer", password=secrets[0],
                                        allow_reconnect=False, connect_timeout=2)
                await nc.close()
                return True
            return False

        await eventually(admitted, 30, f"a trader admitted on {node.url}")
    return secrets[0], secrets[1]


def test_nats_node_loss_then_quorum_loss_under_order_flow(tmp_path: Path,
                                                          database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES, nats_nodes=3) as exchange:
            nodes = exchange.server
            assert isinstance(nodes, NatsCluster)
            urls = nodes.url
            buyer_secret, seller_secret = await traders(exchange, nodes)
            async with connect(urls, account="buyer", secret=buyer_secret,
                               max_reconnect_attempts=-1) as buyer, \
                    connect(urls, account="seller", secret=seller_secret,
                            max_reconnect_attempts=-1) as seller:
                trades = Trades()
                await exchange.nc.subscribe(trades_subject(exchange.market),
                                            cb=trades.on_trade)
                flow = PacedFlow(buyer, seller, exchange.market, "n")
                flow.start()
                await flow.until(ORDERS)
                figures = await one_node(exchange, nodes, flow, trades, leader=False)
                figures += await one_node(exchange, nodes, flow, trades, leader=True)
                figures += await two_nodes(exchange, nodes, flow, trades)
                await flow.stop()
                await check_settled(exchange, flow.acknowledged, ["engine-1", "engine-2"])
                figures.append(await unacknowledged_but_sequenced(exchange, flow))
                print("\n".join(["", "NATS cluster failures (3 nodes, streams on 3 "
                                 "replicas):", *figures]))

    run(scenario(), timeout=240)


async def without_leader(exchange: Cluster) -> bool:
    """The command stream has no leader (JetStream answers no stream information)."""
    try:
        await exchange.nc.jetstream(timeout=1).stream_info(command_stream(exchange.market))
    except (nats.errors.Error, TimeoutError):
        return True
    return False


def answered(flow: PacedFlow, sent_before: float) -> bool:
    """Every order sent before ``sent_before`` has its answer (within the SDK's timeout)."""
    return all(attempt.answered_at for attempt in flow.attempts
               if attempt.sent_at < sent_before)


async def one_node(exchange: Cluster, nodes: NatsCluster, flow: PacedFlow,
                   trades: Trades, *, leader: bool) -> list[str]:
    """``kill -9`` of the command stream's leader (or of a follower): trading goes on;
    the node comes back and catches up."""
    commands = command_stream(exchange.market)
    commands_leader = await stream_leader(nodes, commands)
    led = await asyncio.to_thread(nodes.leaders)
    victim = commands_leader if leader else next(
        name for name in ("n1", "n2", "n3") if name != commands_leader)
    killed_at = time.monotonic()
    nodes.node(victim).kill()
    await flow.until(len(flow.acknowledged_at) + ORDERS)
    await eventually(lambda: bool(trades.seen_at) and trades.seen_at[-1] > killed_at, 30,
                     "a trade after the kill")
    resumed_at = time.monotonic()
    await eventually(lambda: answered(flow, resumed_at), 30, "an answer to every order")
    successor = await stream_leader(nodes, commands)
    assert (successor != victim) if leader else (successor == commands_leader)
    acceptance = longest_gap(flow.acknowledged_at, killed_at, resumed_at)
    matching = longest_gap(trades.seen_at, killed_at, resumed_at)
    waited = flow.longest_wait(killed_at, time.monotonic())
    failed = flow.failed_since(killed_at)

    restarted_at = time.monotonic()
    nodes.node(victim).start()
    await eventually(lambda: asyncio.to_thread(nodes.node(victim).healthy), 30,
                     f"node {victim} healthy again")
    await current(nodes, commands)
    caught_up = time.monotonic() - restarted_at
    await flow.until(len(flow.acknowledged_at) + ORDERS)
    role = described([what for what, node in led.items() if node == victim])
    return [
        f"  kill -9 of {victim} (leading: {role}); command stream leader after: {successor}",
        f"    longest time without an acknowledgement {acceptance:.2f} s, without a trade "
        f"{matching:.2f} s; longest an acknowledged order waited {waited:.2f} s",
        f"    orders not acknowledged: {outcomes(failed)}",
        f"  {victim} restarted: healthy, every replica current, after {caught_up:.2f} s",
    ]


async def two_nodes(exchange: Cluster, nodes: NatsCluster, flow: PacedFlow,
                    trades: Trades) -> list[str]:
    """Two nodes lost: no quorum, orders are refused (909) rather than lost or left
    hanging; one node back: trading resumes."""
    commands = command_stream(exchange.market)
    leader = await stream_leader(nodes, commands)
    other = next(node.membership.server_name for node in nodes.nodes
                 if node.membership is not None and node.membership.server_name != leader)
    killed_at = time.monotonic()
    nodes.node(leader).kill()
    nodes.node(other).kill()
    await eventually(lambda: without_leader(exchange), 30,
                     "the surviving node without a command stream leader")
    leaderless_at = time.monotonic()
    await eventually(lambda: any("909" in attempt.error and attempt.sent_at > leaderless_at
                                 for attempt in flow.failed_since(killed_at)),
                     30, "an order refused as not sequenced")
    first_refusal = min(attempt.answered_at
                        for attempt in flow.failed_since(killed_at)) - killed_at

    restarted_at = time.monotonic()
    nodes.node(other).start()
    await eventually(lambda: flow.acknowledged_at[-1] > restarted_at, 60,
                     "an order acknowledged once the quorum is back")
    acknowledged_again = min(moment for moment in flow.acknowledged_at
                             if moment > restarted_at) - restarted_at
    await eventually(lambda: trades.seen_at[-1] > restarted_at, 30,
                     "a trade once the quorum is back")
    traded_again = min(moment for moment in trades.seen_at if moment > restarted_at) \
        - restarted_at
    acknowledged_during = sum(killed_at < moment < restarted_at
                              for moment in flow.acknowledged_at)
    await flow.until(len(flow.acknowledged_at) + ORDERS)
    resumed_at = time.monotonic()
    await eventually(lambda: answered(flow, resumed_at), 30, "an answer to every order")
    failed = [attempt for attempt in flow.failed_since(killed_at)
              if attempt.sent_at < resumed_at]
    nodes.node(leader).start()
    await eventually(lambda: asyncio.to_thread(
        lambda: all(node.healthy() for node in nodes.nodes)), 30, "every node healthy")
    await current(nodes, commands)
    await flow.until(len(flow.acknowledged_at) + ORDERS)
    return [
        f"  kill -9 of {leader} and {other} (no quorum): {acknowledged_during} orders "
        f"acknowledged after the kill; the first refusal {first_refusal:.2f} s after it",
        f"    orders not acknowledged: {outcomes(failed)}",
        f"  {other} restarted after {restarted_at - killed_at:.1f} s without quorum: an "
        f"order acknowledged {acknowledged_again:.2f} s later, a trade {traded_again:.2f} s "
        f"later",
    ]
