"""The lease on a real nats-server, two replicas in one process: handovers while the
leader renews, a lease value that is not a lease, and the lease task through a NATS
outage (the whole exchange through one: tests/e2e/test_chaos.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import nats
from nats.js.kv import KeyValue

from tests.support.exchange import eventually, run
from tradeplane.processes import NatsServer
from tradeplane_engine.service.lease import Lease, leases_bucket

MARKET = "lease-usdt"


class Replica:
    """A lease and what its callbacks saw."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self.epochs: list[int] = []
        self.lease = Lease(kv, MARKET, name, on_promoted=self._promoted,
                           on_demoted=self._demoted)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.lease.run())

    async def kill(self) -> None:
        """Gone at once: no renewal, no handover (as a ``kill -9``)."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _promoted(self, epoch: int) -> None:
        self.epochs.append(epoch)

    async def _demoted(self) -> None:
        pass


@contextlib.asynccontextmanager
async def replicas(server: NatsServer) -> AsyncIterator[tuple[Replica, Replica]]:
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                            **server.access("engine").options())
    kv = await leases_bucket(nc.jetstream(), memory=False)
    pair = Replica(kv, "a"), Replica(kv, "b")
    for replica in pair:
        replica.start()
    try:
        yield pair
    finally:
        for replica in pair:
            await replica.kill()
        await nc.close()


def leader(pair: tuple[Replica, Replica]) -> Replica | None:
    leading = [replica for replica in pair if replica.lease.leading]
    return leading[0] if len(leading) == 1 else None


def test_handovers_never_race_the_leaders_renewals(tmp_path: Path) -> None:
    """A handover and a renewal both name the revision they replace: one must not make
    the other's stale. The failover benchmark once saw a switchover refused that way (a
    request arriving while a renewal was in flight); here each handover is made exactly
    while a renewal is."""

    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            async with replicas(server) as pair:
                await eventually(lambda: leader(pair) is not None, 5, "a leader")
                for _ in range(10):
                    current = leader(pair)
                    assert current is not None
                    other = pair[1] if current is pair[0] else pair[0]
                    await asyncio.gather(current.lease._renew(),
                                         current.lease.hand_over(other.lease.replica))
                    await eventually(partial(getattr, other.lease, "leading"), 5,
                                     f"{other.lease.replica} leading")
                epochs = sorted(pair[0].epochs + pair[1].epochs)
                assert epochs == list(range(1, 12))

    run(scenario(), timeout=60)


def test_a_value_that_is_not_a_lease_lapses_and_is_taken_over(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            async with replicas(server) as pair:
                await eventually(lambda: leader(pair) is not None, 5, "a leader")
                current = leader(pair)
                assert current is not None
                epoch = current.lease.epoch
                kv = current.lease.kv
                await kv.put(MARKET, b"not json")
                await eventually(lambda: any(epoch < e for r in pair for e in r.epochs), 5,
                                 "a new epoch after the unreadable value")
                await eventually(lambda: leader(pair) is not None, 5, "one leader again")

    run(scenario(), timeout=60)


def test_a_standby_takes_over_after_a_nats_outage(tmp_path: Path) -> None:
    """nats-server down longer than every request timeout: the lease tasks live on, and
    when the leader then stops, the standby takes over."""

    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        try:
            async with replicas(server) as pair:
                await eventually(lambda: leader(pair) is not None, 5, "a leader")
                server.kill()
                await asyncio.sleep(7)  # the outage itself: past the 5 s request timeout
                server.start()
                await eventually(lambda: leader(pair) is not None, 15, "a leader after it")
                current = leader(pair)
                assert current is not None
                standby = pair[1] if current is pair[0] else pair[0]
                epochs = len(standby.epochs)
                await current.kill()
                await eventually(lambda: len(standby.epochs) > epochs, 10,
                                 "the standby taking over")
        finally:
            server.stop()

    run(scenario(), timeout=90)
