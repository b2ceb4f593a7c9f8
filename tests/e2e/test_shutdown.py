"""SIGTERM to an engine that runs as PID 1, as in the container image: the leader hands
its lease to a caught-up standby (a planned switchover, not a failover) and exits, and no
order fails meanwhile. PID 1 matters: the kernel ignores a signal that PID 1 has no
handler for, so an engine that did not handle SIGTERM would wait out the pod's grace
period and be SIGKILLed — an unplanned failover at every rolling update."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import msgspec
import pytest

from tests.e2e.cluster import cluster
from tests.e2e.test_crash_recovery import MARKET
from tests.support.exchange import eventually, run
from tradeplane_engine.wire import LEASES_BUCKET, REPLICAS_BUCKET
from tradeplane_gateway import connect
from tradeplane_operator.children import GRACE_PERIOD

AS_PID_1 = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
"""A new PID namespace whose first process (PID 1) is the engine."""



def _pid_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run([*AS_PID_1, "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _pid_namespaces(),
                                reason="needs unshare and PID namespaces (root on Linux)")


def _child_of(pid: int) -> int:
    """The process that ``unshare --fork`` started (the namespace's PID 1), as seen here."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_sigterm_to_a_leader_running_as_pid_1_hands_over(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET,
                           roles=("engine-1", "engine-2", "recorder", "gateway"),
                           wrap={"engine-1": AS_PID_1}) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            market = exchange.market
            pids: list[int] = []

            async def engine_1_answers() -> bool:
                with contextlib.suppress(Exception):
                    status = await exchange.replica_status("engine-1")
                    pids.append(status["pid"])
                    return bool(status["ready"])
                return False

            await eventually(engine_1_answers, 30, "engine-1 up and caught up")
            assert pids[-1] == 1  # the first process of its PID namespace
            if await exchange.leader() != "engine-1":
                answer = await exchange.nc.request(f"tp.engine.{market}.switchover",
                                                   msgspec.json.encode({"to": "engine-1"}),
                                                   timeout=10)
                assert "error" not in msgspec.json.decode(answer.data)
                await exchange.leader(not_="engine-2")
            replicas = await exchange.nc.jetstream().key_value(REPLICAS_BUCKET)

            async def standby_reported() -> bool:
                with contextlib.suppress(Exception):
                    report = msgspec.json.decode(
                        (await replicas.get(f"{market}.engine-2")).value or b"")
                    return bool(report["role"] == "standby" and report["ready"])
                return False

            await eventually(standby_reported, 10, "engine-2 reporting itself a ready standby")

            placed: list[str] = []
            failed: list[BaseException] = []

            async def trade() -> None:
                number = 0
                while True:
                    number += 1
                    client = buyer if number % 2 else seller
                    try:
                        reply = await client.place(market, "buy" if number % 2 else "sell",
                                                   "0.5", "100", client_order_id=f"t-{number}")
                        assert reply.ok, reply
                        placed.append(f"t-{number}")
                    except Exception as exc:  # every failure counts, none is retried
                        failed.append(exc)

            trading = asyncio.create_task(trade())
            try:
                await eventually(lambda: len(placed) >= 50, 30, "50 orders placed")
                unshare = exchange.processes["engine-1"]
                stopping_at = asyncio.get_running_loop().time()
                os.kill(_child_of(unshare.pid), signal.SIGTERM)
                await eventually(lambda: unshare.poll() is not None, GRACE_PERIOD / 2,
                                 "the PID 1 engine exiting on SIGTERM")
                exited_after = asyncio.get_running_loop().time() - stopping_at
                del exchange.processes["engine-1"]
                assert unshare.returncode == 0
                assert await exchange.leader() == "engine-2"
                leases = await exchange.nc.jetstream().key_value(LEASES_BUCKET)
                lease = msgspec.json.decode((await leases.get(market)).value or b"")
                assert lease["holder"] == "engine-2"
                assert lease["taken"] == "handover"  # planned: counted as a switchover
                await eventually(lambda: len(placed) >= 150, 30, "100 more orders placed")
            finally:
                trading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trading
            assert failed == []
            assert exited_after < GRACE_PERIOD / 3

    run(scenario(), timeout=180)
