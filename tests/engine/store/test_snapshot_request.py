"""A snapshot on demand (``tp.recorder.<market>.snapshot``) against real nats-server and
PostgreSQL: the last state of a market that is being removed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane_engine.core import CancelAll, SetTradingMode, TradingMode
from tradeplane_engine.service import publish_admin
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.snapshots import KEEP, Snapshotter, latest_snapshot
from tradeplane_engine.wire import recorder_subject
from tradeplane_gateway import connect

SUBJECT = recorder_subject("sol-usdt", "snapshot")
RARE = msgspec.structs.replace(SOL, snapshot_every=1_000_000)
"""No scheduled snapshot gets in the way."""


def test_a_final_snapshot_on_request(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, RARE) as exchange:
            nc, js = exchange.nc, exchange.nc.jetstream()

            async def ask(body: Any) -> dict[str, Any]:
                data = body if isinstance(body, bytes) else msgspec.json.encode(body)
                reply: dict[str, Any] = msgspec.json.decode(
                    (await nc.request(SUBJECT, data, timeout=15)).data)
                return reply

            async with connect(exchange.url, account="alice") as alice, \
                    connect(exchange.url, account="bob") as bob:
                for n in range(5):
                    await alice.place("sol-usdt", "sell", "1", str(100 + n))
                    await bob.place("sol-usdt", "buy", "0.5", "102")
            # The market is being removed: cancel-only, every order canceled.
            cancel_only = msgspec.structs.replace(RARE, trading_mode=TradingMode.CANCEL_ONLY)
            await publish_admin(js, "sol-usdt",
                                SetTradingMode(0, 0, mode=TradingMode.CANCEL_ONLY), "m1")
            await exchange.define(cancel_only)
            last = await publish_admin(js, "sol-usdt", CancelAll(0, 0, account=None), "m2")
            assert last == 12
            serving = exchange.services["sol-usdt"]
            await eventually(lambda: serving.engine.last_sequence == last)
            assert serving.engine.l2(10).asks == []

            # A snapshotter given the new definition, with no snapshot yet: it replays from
            # the first command, in the mode the market began in.
            snapshotter = Snapshotter(nc, pool, cancel_only, request_timeout=2.0)
            task = asyncio.create_task(snapshotter.run())
            try:
                await eventually(lambda: snapshotter.position == last, timeout=15,
                                 what="the snapshotter catching up")
                reply = await ask({"through": last})
                assert reply == {"market": "sol-usdt", "sequence": last,
                                 "stateHash": serving.engine.state_hash()}
                async with pool.acquire() as connection:
                    stored = await latest_snapshot(connection, "sol-usdt")
                assert stored is not None
                assert (stored.sequence, stored.state_hash) == (last, reply["stateHash"])
                assert stored.engine().mode is TradingMode.CANCEL_ONLY
                assert stored.book_sequence == last

                # Asked again (a retry): the same snapshot, not another one.
                assert await ask({"through": 3}) == reply
                assert snapshotter.taken == 1

                # What is not a request is answered, and the snapshotter goes on.
                for bad in (b"not json", {"through": 0}, {"through": "12"}, {},
                            {"through": 1, "extra": True}, [12],
                            b" " * 100_000 + b'{"through": 1}'):  # oversized
                    error = await ask(bad)
                    assert error["code"] == "BAD_REQUEST", str(bad)[:40]
                    assert "through" in error["error"] or "JSON" in error["error"], error
                    assert error["market"] == "sol-usdt"
                await nc.publish(SUBJECT, b'{"through": 1}')  # no reply subject: ignored
                assert not task.done()

                # A command not sequenced in time: a clear error, not a hang.
                late = await ask({"through": last + 1})
                assert late["code"] == "NOT_CAUGHT_UP"
                assert f"through {last}" in late["error"]

                # A request waits for the snapshotter to reach its command.
                waiting = asyncio.create_task(ask({"through": last + 1}))
                await publish_admin(js, "sol-usdt", CancelAll(0, 0, account=None), "m3")
                assert (await waiting)["sequence"] == last + 1
                assert snapshotter.taken == 2
                async with pool.acquire() as connection:
                    assert await connection.fetchval("SELECT count(*) FROM snapshots") <= KEEP
                assert not task.done()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await pool.close()

    run(scenario())
