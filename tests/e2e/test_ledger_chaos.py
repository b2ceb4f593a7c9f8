"""Balances under kill -9, every part a real process: the ledger's leader and the
engine's leader are killed in turn under order flow, six times. Each time a standby
takes over by itself; nothing acknowledged is lost, and the ledger's invariants hold,
live and in PostgreSQL, as ``tradeplane audit`` proves (docs/ledger.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.e2e.cluster import Cluster, OrderFlow, cluster
from tests.e2e.test_crash_recovery import MARKET
from tests.e2e.test_failover import check_settled
from tests.support.exchange import eventually, run
from tradeplane.up_ledger import set_up_balances
from tradeplane_gateway import connect

ROLES = ("engine-1", "engine-2", "ledger-1", "ledger-2", "recorder", "gateway")
KILLS = 6


def test_kill_9_of_the_ledger_and_engine_leaders_keeps_every_balance(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES,
                           ledger_shards=1) as exchange:
            admin = exchange.server.access("admin")
            assert not await set_up_balances(exchange.server.url, admin, [MARKET], 1,
                                             ["buyer", "seller"])
            async with connect(exchange.url, account="buyer") as buyer, \
                    connect(exchange.url, account="seller") as seller:
                flow = OrderFlow(buyer, seller, exchange.market, "l")
                flow.start()
                await flow.until(100)
                engines, ledgers = ["engine-1", "engine-2"], ["ledger-1", "ledger-2"]
                for kill in range(KILLS):
                    if kill % 2 == 0:
                        await _kill_leader(exchange, ledgers, f"ledger-{3 + kill}",
                                           exchange.ledger_leader)
                    else:
                        await _kill_leader(exchange, engines, f"engine-{3 + kill}",
                                           exchange.leader)
                    await flow.until(len(flow.acknowledged) + 100)
                await flow.stop()
            await check_settled(exchange, flow.acknowledged, engines)
            commands = (await exchange.engine_status())["sequence"]

            async def all_settled() -> bool:
                status = await exchange.ledger_status()
                return bool(status["settled"].get(exchange.market, 0) >= commands
                            and not status["audit"])

            await eventually(all_settled, 60, "the ledger settling every command")
            audit = subprocess.run(
                [sys.executable, "-m", "tradeplane", "--nats", exchange.url, "audit",
                 "--ledger-shards", "1", "--postgres-dsn", database],
                capture_output=True, text=True, timeout=120, check=False)
            assert audit.returncode == 0, audit.stdout + audit.stderr

    run(scenario(), timeout=420)


async def _kill_leader(exchange: Cluster, replicas: list[str], replacement: str,
                       leader_of: Callable[..., Awaitable[str]]) -> None:
    """kill -9 the leader among ``replicas``; a standby leads; a new replica starts."""
    leader = await leader_of()
    exchange.kill(leader)
    replicas.remove(leader)
    successor = await leader_of(not_=leader)
    assert successor in replicas
    exchange.start(replacement)
    replicas.append(replacement)
