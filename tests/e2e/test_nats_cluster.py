"""The exchange on a three-node NATS cluster with every stream and bucket on three
replicas, as docs/production.md recommends, each part a real process: ``kill -9`` of the
node that leads the command stream, its return, then two nodes at once (no quorum).

What each failure costs is measured here and printed (``-s`` shows it): the longest
time without an acknowledged order and without a trade, from the kill. Nothing
acknowledged may be lost and no trade may be recorded twice: the events stream,
PostgreSQL and every replica's state agree at the end. Traders log in through the auth
service (NATS's auth callout) on each node: the accounts configuration works clustered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg

from tests.e2e.cluster import Cluster, OrderFlow, cluster
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


class Trades:
    """When each public trade was seen (``time.monotonic``)."""

    def __init__(self) -> None:
        self.seen_at: list[float] = []

    async def on_trade(self, _msg: Msg) -> None:
        self.seen_at.append(time.monotonic())


def longest_gap(times: list[float], since: float, until: float) -> float:
    """The longest time between ``since`` and ``until`` with nothing in ``times``."""
    inside = [since, *(moment for moment in times if since < moment < until), until]
    return max(later - earlier for earlier, later in zip(inside, inside[1:], strict=False))


async def command_stream_leader(exchange: Cluster) -> str:
    """The server name of the node that leads the market's command stream."""
    found: list[str] = []

    async def known() -> bool:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await exchange.nc.jetstream().stream_info(command_stream(exchange.market))
            if info.cluster is not None and info.cluster.leader:
                found.append(info.cluster.leader)
                return True
        return False

    await eventually(known, 20, "a leader of the command stream")
    return found[-1]


async def all_replicas_current(exchange: Cluster) -> bool:
    """Every stream replica of the command stream current with its leader."""
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        info = await exchange.nc.jetstream().stream_info(command_stream(exchange.market))
        peers = info.cluster.replicas if info.cluster is not None else None
        return bool(peers) and len(peers or []) == 2 and all(
            peer.current and not peer.offline for peer in peers or [])
    return False


@contextlib.asynccontextmanager
async def traders(exchange: Cluster, nodes: NatsCluster) -> AsyncIterator[tuple[str, str]]:
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
    yield secrets[0], secrets[1]


def test_nats_node_loss_then_quorum_loss_under_order_flow(tmp_path: Path,
                                                          database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES, nats_nodes=3) as exchange:
            nodes = exchange.server
            assert isinstance(nodes, NatsCluster)
            urls = nodes.url
            async with traders(exchange, nodes) as (buyer_secret, seller_secret), \
                    connect(urls, account="buyer", secret=buyer_secret,
                            max_reconnect_attempts=-1) as buyer, \
                    connect(urls, account="seller", secret=seller_secret,
                            max_reconnect_attempts=-1) as seller:
                trades = Trades()
                await exchange.nc.subscribe(trades_subject(exchange.market),
                                            cb=trades.on_trade)
                flow = OrderFlow(buyer, seller, exchange.market, "n")
                flow.start()
                await flow.until(ORDERS)
                figures = await one_node(exchange, nodes, flow, trades)
                figures += await two_nodes(exchange, nodes, flow, trades)
                await flow.stop()
                await check_settled(exchange, flow.acknowledged, ["engine-1", "engine-2"])
                print("\n".join(["", "NATS cluster failures (3 nodes, streams on 3 "
                                 "replicas):", *figures]))

    run(scenario(), timeout=240)


async def one_node(exchange: Cluster, nodes: NatsCluster, flow: OrderFlow,
                   trades: Trades) -> list[str]:
    """``kill -9`` of the command stream's leader: trading goes on; it comes back and
    catches up."""
    leader = await command_stream_leader(exchange)
    meta = nodes.meta_leader()
    killed_at = time.monotonic()
    nodes.node(leader).kill()
    await flow.until(len(flow.acknowledged) + ORDERS)
    await eventually(lambda: bool(trades.seen_at) and trades.seen_at[-1] > killed_at
                     and len(flow.acknowledged_at) > 0, 30, "trades after the kill")
    resumed_at = time.monotonic()
    successor = await command_stream_leader(exchange)
    assert successor != leader
    acceptance = longest_gap(flow.acknowledged_at, killed_at, resumed_at)
    matching = longest_gap(trades.seen_at, killed_at, resumed_at)
    refused = [why for moment, why in flow.failed if moment > killed_at]

    restarted_at = time.monotonic()
    nodes.node(leader).start()
    node = nodes.node(leader)
    await eventually(node.healthy, 30, f"node {leader} healthy again")
    await eventually(lambda: all_replicas_current(exchange), 30,
                     "the command stream's replicas current")
    caught_up = time.monotonic() - restarted_at
    await flow.until(len(flow.acknowledged) + ORDERS)
    return [
        f"  kill -9 of {leader} (command stream leader; meta leader {meta}): "
        f"longest time without an acknowledged order {acceptance:.2f} s, without a trade "
        f"{matching:.2f} s; {len(refused)} orders not acknowledged "
        f"{[why[:100] for why in refused[:2]]}; new stream leader {successor}",
        f"  {leader} restarted: healthy with every replica current after {caught_up:.2f} s",
    ]


async def two_nodes(exchange: Cluster, nodes: NatsCluster, flow: OrderFlow,
                    trades: Trades) -> list[str]:
    """Two nodes lost: no quorum, orders are refused (909) rather than lost or left
    hanging; one node back: trading resumes."""
    leader = await command_stream_leader(exchange)
    other = next(node.membership.server_name for node in nodes.nodes
                 if node.membership is not None and node.membership.server_name != leader)
    refused_before = len(flow.failed)
    killed_at = time.monotonic()
    nodes.node(leader).kill()
    nodes.node(other).kill()
    acknowledged_before = len(flow.acknowledged_at)
    await eventually(lambda: any("909" in why for _, why in flow.failed[refused_before:]),
                     30, "an order refused as not sequenced")
    refusals = flow.failed[refused_before:]
    first_refusal = refusals[0][0] - killed_at
    acknowledged_during = len(flow.acknowledged_at) - acknowledged_before

    restarted_at = time.monotonic()
    nodes.node(other).start()
    await flow.until(len(flow.acknowledged) + 1)
    resumed = flow.acknowledged_at[-1] - restarted_at
    await eventually(lambda: bool(trades.seen_at) and trades.seen_at[-1] > restarted_at,
                     30, "a trade after the quorum came back")
    trade_resumed = trades.seen_at[-1] - restarted_at
    await flow.until(len(flow.acknowledged) + ORDERS)
    nodes.node(leader).start()
    await eventually(lambda: all(node.healthy() for node in nodes.nodes), 30,
                     "every node healthy")
    await eventually(lambda: all_replicas_current(exchange), 30,
                     "the command stream's replicas current")
    await flow.until(len(flow.acknowledged) + ORDERS)
    kinds = sorted({why.split(":")[0] for _, why in refusals})
    return [
        f"  kill -9 of {leader} and {other} (no quorum): {acknowledged_during} orders "
        f"acknowledged after the kill, first refusal after {first_refusal:.2f} s "
        f"({kinds}: {refusals[-1][1][:120]})",
        f"  {other} restarted: an order acknowledged after {resumed:.2f} s, "
        f"a trade after {trade_resumed:.2f} s",
    ]
