"""Switchover requests that are not what ``tradeplane failover`` or the operator send, on
a real nats-server with two leased replicas in one process: each is answered with an
error (or, with nobody to answer, ignored), and the lease stays where it was."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane_engine.service import MarketService
from tradeplane_engine.service.lease import leases_bucket
from tradeplane_engine.wire import engine_subject

SUBJECT = engine_subject("sol-usdt", "switchover")


def test_a_bad_switchover_request_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            nc = exchange.nc
            leases = await leases_bucket(nc.jetstream(), memory=True)
            replicas = {name: MarketService(nc, SOL, SETTINGS, replica=name, leases=leases)
                        for name in ("a", "b")}
            tasks = [asyncio.create_task(service.run()) for service in replicas.values()]
            try:
                await eventually(lambda: sum(s.leading for s in replicas.values()) == 1
                                 and all(s.ready.is_set() for s in replicas.values()),
                                 10, "a leader and a ready standby")
                leader = next(s for s in replicas.values() if s.leading)
                standby = next(s for s in replicas.values() if not s.leading)
                epoch = leader.epoch
                for bad in (b"\xff not json", b'{"to": 1}', b'{"to": "b", "now": true}',
                            b" " * 100_000 + msgspec.json.encode({"to": standby.replica})):
                    answer = msgspec.json.decode((await nc.request(SUBJECT, bad,
                                                                   timeout=5)).data)
                    assert list(answer) == ["error"], answer
                # A well-formed request nobody waits for the outcome of: not carried out.
                await nc.publish(SUBJECT, msgspec.json.encode({"to": standby.replica}))
                await nc.flush()
                with contextlib.suppress(AssertionError):  # it must not happen
                    await eventually(lambda: not leader.leading, 1.5)
                assert leader.leading
                assert leader.epoch == epoch
                assert not any(task.done() for task in tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario())
