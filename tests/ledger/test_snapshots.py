"""Ledger snapshots (docs/ledger.md): the recorder's snapshotter, a replica that
publishes nothing, stores the shard's state every so many commands, equal to the
shard's own; a ledger replica restarted with the database starts from the newest one
and goes on exactly where the shard was."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.ledger import Ledger
from tradeplane_engine.ledger_commands import ledger_command
from tradeplane_engine.service.ledger import LedgerService
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.ledger_snapshots import LedgerSnapshotter, latest_ledger_snapshot
from tradeplane_engine.wire import MARKETS_BUCKET, ledger_command_stream
from tradeplane_gateway import connect

ASSETS = {"SOL": 4, "USDT": 6}
EVERY = 10
"""Ledger commands between two snapshots: a setting (``every``); small so that a short
session crosses several."""


def test_a_restarted_ledger_starts_from_its_snapshot_and_goes_on(tmp_path: Path,
                                                                 database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, ledger_shards=1,
                                      assets=ASSETS) as exchange, \
                    connect(exchange.url, account="alice") as alice, \
                    connect(exchange.url, account="bob") as bob:
                await exchange.fund("alice", USDT=10_000 * 10**6)
                await exchange.fund("bob", SOL=100 * 10**4)
                snapshotter = LedgerSnapshotter(exchange.nc, pool, 0, 1, every=EVERY)
                snapshots = asyncio.create_task(snapshotter.run())
                for number in range(8):
                    await bob.place("sol-usdt", "sell", "1", "100", client_order_id=f"s{number}")
                    await alice.place("sol-usdt", "buy", "1", "100")
                serving = exchange.ledgers[0]
                await eventually(lambda: serving.ledger.balance("alice", "SOL")[0]
                                 == 8 * 10**4, 10, "eight trades settled")
                await eventually(lambda: snapshotter.taken >= 2
                                 and snapshotter.position == serving.ledger.sequence, 20,
                                 "two snapshots taken, the snapshotter caught up")
                async with pool.acquire() as connection:
                    stored = await latest_ledger_snapshot(connection, 0)
                assert stored is not None
                assert stored.sequence % EVERY == 0
                assert stored.ledger().state_hash() == (
                    await _replayed(exchange.nc, stored.sequence)).state_hash()

                # The serving replica stops; a new one starts from the snapshot.
                task = exchange.tasks[-1]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                ledger_nc = exchange.connections[-1]
                kv = await ledger_nc.jetstream().key_value(MARKETS_BUCKET)
                again = LedgerService(ledger_nc, 0, 1, SETTINGS, pool=pool)
                exchange.tasks.append(asyncio.create_task(again.run(kv)))
                await asyncio.wait_for(again.ready.wait(), 10)
                assert again.ledger.sequence >= stored.sequence
                assert again.ledger.state_hash() == serving.ledger.state_hash()
                exchange.ledgers[0] = again
                await bob.place("sol-usdt", "sell", "1", "100", client_order_id="s-last")
                take = await alice.place("sol-usdt", "buy", "1", "100")
                assert take.order is not None
                assert take.order.status == "filled"
                await eventually(lambda: again.ledger.balance("alice", "SOL")[0] == 9 * 10**4,
                                 10, "the new replica settling the next trade")
                assert again.ledger.audit() == []
                snapshots.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await snapshots
        finally:
            await pool.close()

    run(scenario())


async def _replayed(nc: object, through: int) -> Ledger:
    """The shard's state from its command stream alone, through ``through``."""
    js = nc.jetstream()  # type: ignore[attr-defined]
    ledger = Ledger(0, 1)
    for sequence in range(1, through + 1):
        message = await js.get_msg(ledger_command_stream(0), sequence)
        command = ledger_command("replay", SequencedCommand(
            sequence, 0, message.data, None, subject=message.subject))
        if command is not None:
            ledger.apply(command)
    return ledger
