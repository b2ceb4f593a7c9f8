"""Two operator replicas and one Lease: one acts, the other takes over when it goes.

The replicas run with the default leader election (15 s lease, 10 s renew deadline,
2 s retry period), as the chart deploys them, each in a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from tests.operator_.harness import (
    OperatorReplica,
    World,
    eventually,
    market_manifest,
    operator_world,
)
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane_operator.config import Config
from tradeplane_operator.kube import (
    LEASES,
    STATEFULSETS,
    USED,
    USED_FOR_LEADER_ELECTION,
    KubeApi,
)
from tradeplane_operator.leadership import (
    Election,
    LeadershipLostError,
    Lease,
    standby_liveness,
)

DEFAULTS = Config()


def _lease(world: World) -> dict[str, Any]:
    lease = world.cluster.get(LEASES.plural, DEFAULTS.lease_name)
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


def _replicas(world: World, name: str) -> int | None:
    sts = world.cluster.get(STATEFULSETS.plural, f"{name}-engine")
    return None if sts is None else int(sts["spec"]["replicas"])


@contextlib.asynccontextmanager
async def _two_replicas(world: World) -> AsyncIterator[tuple[OperatorReplica,
                                                              OperatorReplica]]:
    """``operator-a`` leads and has made a Market's StatefulSet; ``operator-b``, started
    after it, waits."""
    async with OperatorReplica(world, "operator-a") as first:
        assert await asyncio.to_thread(first.leading.wait, 30)
        async with OperatorReplica(world, "operator-b") as second:
            await world.apply(market_manifest())
            await eventually(lambda: _replicas(world, "sol-usdt") == 2, 20,
                             "the StatefulSet")
            assert _lease(world)["holderIdentity"] == "operator-a"
            assert not second.leading.is_set()
            yield first, second


def test_a_standby_takes_over_when_the_leader_dies_and_reconciles_a_change(
        tmp_path: Path) -> None:
    """The leader is killed (no release); the Market changes meanwhile. The standby
    takes the Lease once it has not seen it renewed for the lease duration, and applies
    the change. Nothing acts before the Lease expires."""
    async def scenario() -> None:
        async with (operator_world(tmp_path, start=False) as world,
                    _two_replicas(world) as (first, second)):
            await first.crash()
            crashed = time.monotonic()
            await world.patch("sol-usdt", {"spec": {"replicas": 3}})
            await eventually(lambda: _replicas(world, "sol-usdt") == 3, 60,
                             "the change applied by the standby")
            takeover = time.monotonic() - crashed
            print(f"takeover after the leader's crash: {takeover:.1f} s")
            lease = _lease(world)
            assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("operator-b", 1)
            assert second.leading.is_set()
            # The old leader renewed at most one retry period before it died; the
            # standby must wait out the lease from then.
            assert takeover >= DEFAULTS.lease_duration - DEFAULTS.retry_period
            bucket = await world.nc.jetstream().key_value("tp-markets")

            async def defined() -> bool:
                entry = await bucket.get("sol-usdt")
                return entry.value is not None and json.loads(entry.value)["replicas"] == 3
            await eventually(defined, 10, "the definition written by the standby")
            assert world.requests_beyond({**USED, **USED_FOR_LEADER_ELECTION}) == set()
    run(scenario())


def test_a_leader_stopped_in_order_hands_over_at_once(tmp_path: Path) -> None:
    """A leader stopped in order (a rolling update, a drain) releases the Lease: the
    standby takes it at its next reading, not after the lease duration."""
    async def scenario() -> None:
        async with (operator_world(tmp_path, start=False) as world,
                    _two_replicas(world) as (first, second)):
            await first.stop()
            stopped = time.monotonic()
            assert not _lease(world).get("holderIdentity")
            await world.patch("sol-usdt", {"spec": {"replicas": 3}})
            await eventually(lambda: _replicas(world, "sol-usdt") == 3, 30,
                             "the change applied by the standby")
            handover = time.monotonic() - stopped
            print(f"handover after an orderly stop: {handover:.1f} s")
            assert handover < DEFAULTS.lease_duration - DEFAULTS.retry_period
            assert _lease(world)["holderIdentity"] == "operator-b"
            assert second.leading.is_set()
    run(scenario())


def test_of_two_replicas_taking_a_free_lease_at_once_one_gets_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
            try:
                leases = [Lease(kube, Election("default", "contested", identity))
                          for identity in ("a", "b")]
                holders = await asyncio.gather(*(lease.try_acquire_or_renew()
                                                 for lease in leases))
                took = [lease.election.identity for lease, holder in zip(
                    leases, holders, strict=True) if holder == lease.election.identity]
                assert len(took) == 1, holders
                winner = took[0]
                # A second round: the holder renews, the other sees it held and waits.
                again = await asyncio.gather(*(lease.try_acquire_or_renew()
                                               for lease in leases))
                assert again == [winner, winner]
                lease = emulated.get(LEASES.plural, "contested")
                assert lease is not None
                assert lease["spec"]["holderIdentity"] == winner
                assert lease["spec"]["leaseTransitions"] == 0
            finally:
                await kube.close()
    run(scenario())


def test_a_leader_cut_off_from_the_api_stops_before_a_standby_takes_over(
        tmp_path: Path) -> None:
    """The renew deadline (10 s) ends before the lease (15 s): a leader that cannot reach
    the API server gives up before the standby may take the Lease."""
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
            # An API server nobody listens on: the leader's side of a network partition.
            unreachable = KubeApi(kopf.ConnectionInfo(server="http://127.0.0.1:9"))
            leader = Lease(kube, Election("default", "partitioned", "leader"))
            standby = Lease(kube, Election("default", "partitioned", "standby"))
            try:
                assert await leader.try_acquire_or_renew() == "leader"
                assert await standby.try_acquire_or_renew() == "leader"
                leader.kube = unreachable
                loop = asyncio.get_running_loop()
                lost_at: list[float] = []

                async def hold() -> None:
                    try:
                        await leader.hold()
                    except LeadershipLostError:
                        lost_at.append(loop.time())
                holding = asyncio.create_task(hold())
                await standby.acquire()
                acquired_at = loop.time()
                await holding
                assert lost_at
                assert lost_at[0] < acquired_at
                lease = emulated.get(LEASES.plural, "partitioned")
                assert lease is not None
                assert lease["spec"]["holderIdentity"] == "standby"
            finally:
                await kube.close()
                await unreachable.close()
    run(scenario())


def test_a_standby_answers_the_liveness_probe(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        async with (standby_liveness(f"http://127.0.0.1:{port}/healthz"),
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/healthz") as response):
            assert response.status == 200
    run(scenario())


def test_a_leader_that_finds_another_holder_stops_acting_at_once(tmp_path: Path) -> None:
    """Another replica's name in the Lease (it took it while this one was frozen, say):
    at its next renewal the leader cancels kopf and ``handlers.run`` raises, which makes
    ``tradeplane operator`` exit so that its pod starts again as a standby."""
    async def scenario() -> None:
        async with (operator_world(tmp_path, start=False) as world,
                    OperatorReplica(world, "operator-a") as replica):
            assert await asyncio.to_thread(replica.leading.wait, 30)
            lease = world.cluster.get(LEASES.plural, DEFAULTS.lease_name)
            assert lease is not None
            await world.kube.patch(LEASES, "default", DEFAULTS.lease_name, {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": "operator-b"}})
            assert await replica.ended(2 * DEFAULTS.retry_period + 5)
            assert isinstance(replica.error, LeadershipLostError)
            assert "operator-b holds the Lease" in str(replica.error)
            assert _lease(world)["holderIdentity"] == "operator-b"  # not released
    run(scenario())
