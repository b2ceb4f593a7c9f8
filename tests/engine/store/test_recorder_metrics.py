"""The recorder's metrics against real nats-server and PostgreSQL: what it wrote, as the
database holds it, and its lag once it has caught up."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
from prometheus_client import generate_latest

from tests.support.exchange import SOL, eventually, local_exchange, run
from tests.support.metrics import samples, value
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.recorder import Recorder
from tradeplane_gateway import connect

MARKET = msgspec.structs.replace(SOL, name="recorder-metrics")


def test_the_recorder_counts_what_it_wrote(tmp_path: Path, database: str) -> None:
    name = MARKET.name

    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, MARKET) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            recorder = Recorder(exchange.nc, pool, MARKET, batch=8)
            task = asyncio.create_task(recorder.run())
            try:
                for n in range(10):
                    await alice.place(name, "sell", "1", str(100 + n), response="ack")
                await bob.place(name, "buy", "2.5", "102")  # three trades
                # Through the 11th command, in 11 events messages or fewer (one per
                # batch the engine applied).
                await eventually(lambda: recorder.command_sequence == 11, timeout=15,
                                 what="the recorder catching up")
                await eventually(lambda: recorder.stream_end == recorder.position, timeout=5,
                                 what="the recorder's reading of the stream's end")
                position = recorder.position
                scraped = samples(generate_latest().decode())
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with pool.acquire() as connection:
                counts = {table: await connection.fetchval(
                    f"SELECT count(*) FROM {table} WHERE market = $1", name)
                    for table in ("journal", "trades", "order_history")}
        await pool.close()

        assert value(scraped, "tradeplane_recorder_events_written_total", market=name) == 11
        for table, rows in counts.items():
            assert value(scraped, "tradeplane_recorder_rows_written_total", market=name,
                         table=table) == rows, table
        assert counts["trades"] == 3
        # 11 orders inserted, and the makers the buy filled updated if they were inserted
        # in an earlier batch than the buy.
        assert 11 <= value(scraped, "tradeplane_recorder_rows_written_total", market=name,
                           table="orders") <= 11 + 3
        batches = value(scraped, "tradeplane_recorder_write_seconds_count", market=name)
        assert 1 <= batches <= 11
        assert value(scraped, "tradeplane_recorder_write_seconds_sum", market=name) > 0
        assert 1 <= position <= 11
        assert value(scraped, "tradeplane_recorder_position", market=name) == position
        assert value(scraped, "tradeplane_recorder_lag_events", market=name) == 0

    run(scenario())
