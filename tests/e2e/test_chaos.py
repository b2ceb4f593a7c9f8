"""Chaos with every part a real process: nats-server killed under order flow and brought
back, then the leader killed with ``kill -9``, then frozen with SIGSTOP. Each time a
standby takes over by itself, and nothing acknowledged is lost or recorded twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.e2e.cluster import OrderFlow, cluster
from tests.e2e.test_crash_recovery import MARKET
from tests.e2e.test_failover import check_settled
from tests.support.exchange import run
from tradeplane_gateway import connect

ROLES = ("engine-1", "engine-2", "recorder", "gateway")
NATS_OUTAGE = 10.0
"""How long nats-server stays down: longer than every engine timeout (lease, requests,
heartbeats), as in the outage that once left standbys unable to take over."""


def test_nats_outage_then_kill_9_then_sigstop_of_the_leader(tmp_path: Path,
                                                            database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES) as exchange, \
                connect(exchange.url, account="buyer", max_reconnect_attempts=-1) as buyer, \
                connect(exchange.url, account="seller", max_reconnect_attempts=-1) as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "c")
            flow.start()
            await flow.until(100)

            exchange.server.kill()
            await asyncio.sleep(NATS_OUTAGE)  # the fault itself, not a synchronisation
            exchange.server.start()
            await flow.until(len(flow.acknowledged) + 100, timeout=60)

            leader = await exchange.leader()
            exchange.kill(leader)
            successor = await exchange.leader(not_=leader, timeout=10)
            exchange.start(leader)  # back as a standby, as a restarted pod would be
            await flow.until(len(flow.acknowledged) + 100)

            exchange.signal(successor, signal.SIGSTOP)
            try:
                third = await exchange.leader(not_=successor, timeout=10)
                await flow.until(len(flow.acknowledged) + 100)
            finally:
                exchange.signal(successor, signal.SIGCONT)
            assert third == leader
            await flow.stop()
            await check_settled(exchange, flow.acknowledged, ["engine-1", "engine-2"])

    run(scenario(), timeout=300)
