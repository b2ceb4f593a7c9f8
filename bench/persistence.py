"""Persistence benchmark: the recorder into PostgreSQL, and recovery with and without a
snapshot. Real nats-server and PostgreSQL, started here and stopped at the end.

1. The limit: ``copy_records_to_table`` of trade-shaped rows into an empty table.
2. The recorder's write path on the same rows two ways — binary COPY (what the recorder
   does) and ``executemany`` of INSERTs — to show why it uses COPY.
3. The recorder end to end: an events stream prefilled from the standard workload,
   recorded from the start: events messages/s and rows/s.
4. Recovery: the standard workload's commands in a command stream, applied once by an
   engine service (which publishes their events), then an engine restarted from scratch
   (full replay) and from the newest snapshot, timed until it is ready to serve.
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
import uvloop
from nats.js import JetStreamContext

from tradeplane.postgres import PostgresServer
from tradeplane.processes import NatsServer
from tradeplane.up import publish_markets
from tradeplane_engine.core import BookLevel, Engine
from tradeplane_engine.core.state import digest
from tradeplane_engine.service import MarketService
from tradeplane_engine.store.database import prepare_connection
from tradeplane_engine.store.migrate import migrate
from tradeplane_engine.store.recorder import Recorder, record
from tradeplane_engine.store.rows import TRADES, Rows
from tradeplane_engine.store.snapshots import Snapshot, save_snapshot
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import (
    EventBatch,
    MarketDefinition,
    command_subject,
    decode_events,
    encode_command,
    encode_events,
    event_subject,
)
from tradeplane_engine.workload import SPEC, generate, to_commands

MARKET = MarketDefinition(name="bench-usdt", base=SPEC.base, quote=SPEC.quote,
                          tick_size=SPEC.tick_size, lot_size=SPEC.lot_size,
                          snapshot_every=100_000)


async def fresh_database(server: PostgresServer, name: str) -> str:
    admin = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = server.dsn.rsplit("/", 1)[0] + "/" + name
    connection = await asyncpg.connect(dsn)
    await migrate(connection)
    await connection.close()
    return dsn


def event_payloads(count: int) -> list[bytes]:
    """The events messages of the standard workload's first ``count`` commands."""
    engine = Engine(SPEC)
    payloads = []
    for command in to_commands(generate(count)):
        events = engine.apply(command)
        payloads.append(encode_events(EventBatch(MARKET.name, command.sequence,
                                                 command.timestamp, events)))
    return payloads


async def publish_all(js: JetStreamContext, subject: str, payloads: list[bytes]) -> None:
    window = 5_000
    for start in range(0, len(payloads), window):
        pending = [await js.publish_async(subject, payload)
                   for payload in payloads[start:start + window]]
        await asyncio.gather(*pending)


async def copy_limit(dsn: str, rows: list[tuple[object, ...]]) -> float:
    connection = await asyncpg.connect(dsn)
    await connection.execute("CREATE TEMPORARY TABLE copy_probe (LIKE trades)")
    started = time.perf_counter()
    await connection.copy_records_to_table("copy_probe", records=rows, columns=TRADES)
    seconds = time.perf_counter() - started
    await connection.close()
    return len(rows) / seconds


async def write_path(dsn: str, payloads: list[bytes], batch: int) -> tuple[float, float, int]:
    """Rows per second of ``record`` (COPY) and of executemany INSERTs, same batches."""
    batches = []
    for start in range(0, len(payloads), batch):
        rows = Rows()
        for offset, payload in enumerate(payloads[start:start + batch]):
            rows.add(start + offset + 1, decode_events(payload), payload.decode())
        batches.append(rows)
    total = sum(len(r.journal) + len(r.history) + len(r.trades) + len(r.rejections)
                + len(r.new_orders) + len(r.changes) for r in batches)
    connection = await asyncpg.connect(dsn)
    await prepare_connection(connection)
    started = time.perf_counter()
    for rows in batches:
        await record(connection, rows)
    copy_seconds = time.perf_counter() - started
    await connection.execute("TRUNCATE journal, orders, order_history, trades, rejections")
    started = time.perf_counter()
    for rows in batches:
        await insert_many(connection, rows)
    insert_seconds = time.perf_counter() - started
    await connection.close()
    return total / copy_seconds, total / insert_seconds, total


async def insert_many(connection: asyncpg.Connection, rows: Rows) -> None:
    """The same batch as ``record``, with executemany instead of COPY."""
    from tradeplane_engine.store import rows as columns

    async with connection.transaction():
        for table, records, names in (
                ("journal", rows.journal, columns.JOURNAL),
                ("orders", rows.order_rows(), columns.ORDERS),
                ("order_history", rows.history, columns.HISTORY),
                ("trades", rows.trades, columns.TRADES),
                ("rejections", rows.rejections, columns.REJECTIONS)):
            if records:
                placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
                await connection.executemany(
                    f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})",
                    records)
        if rows.changes:
            await connection.executemany(
                "UPDATE orders SET status = coalesce($3, status), filled = coalesce($4, filled),"
                " remaining = coalesce($5, remaining), price = coalesce($6, price),"
                " quantity = coalesce($7, quantity), reason = coalesce($8, reason),"
                " updated_sequence = $9 WHERE market = $1 AND order_id = $2",
                rows.change_rows())


async def recorder_rate(url: str, dsn: str, payloads: list[bytes]) -> float:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    await publish_all(nc.jetstream(), event_subject(MARKET.name), payloads)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=prepare_connection)
    recorder = Recorder(nc, pool, MARKET)
    started = time.perf_counter()
    task = asyncio.create_task(recorder.run())
    while recorder.position < len(payloads):
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    await nc.close()
    return len(payloads) / seconds


async def recovery(url: str, dsn: str, commands: int) -> tuple[float, float, float, int]:
    """Seconds: first apply (publishing), restart with full replay, restart from snapshot."""
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    js = nc.jetstream()
    workload = to_commands(generate(commands, seed=7))
    await publish_all(js, command_subject(MARKET.name),
                      [encode_command(command) for command in workload])

    async def start(pool: asyncpg.Pool | None) -> tuple[MarketService, float]:
        service = MarketService(nc, MARKET, StreamSettings(), batch=4096, pool=pool)
        started = time.perf_counter()
        task = asyncio.create_task(service.run())
        await service.ready.wait()
        while service.engine.last_sequence < commands:
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return service, seconds

    first, first_seconds = await start(None)
    replayed, full_seconds = await start(None)
    assert replayed.engine.state_hash() == first.engine.state_hash()
    # The snapshot a snapshotter would hold, at its worst: a whole interval before the end.
    interval = MARKET.snapshot_every
    at = ((commands - 1) // interval) * interval
    engine = Engine(SPEC)
    book_sequence = 0
    for command in workload[:at]:
        if any(isinstance(event, BookLevel) for event in engine.apply(command)):
            book_sequence = command.sequence
    state = engine.snapshot()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    async with pool.acquire() as connection:
        await save_snapshot(connection, Snapshot(MARKET.name, at, book_sequence, state,
                                                 digest(state)))
    restored, snapshot_seconds = await start(pool)
    assert restored.engine.state_hash() == first.engine.state_hash()
    await pool.close()
    await nc.close()
    return first_seconds, full_seconds, snapshot_seconds, restored.replayed


async def benchmark(args: argparse.Namespace, url: str, server: PostgresServer) -> None:
    if args.only in (None, "recorder"):
        await recorder_figures(args, url, server)
    if args.only in (None, "recovery"):
        gc.collect()
        first, full, snapshot, replayed = await recovery(
            url, await fresh_database(server, "bench_recovery"), args.commands)
        print(f"recovery of {args.commands:,} commands: first run {first:.1f} s "
              f"({args.commands / first:,.0f} commands/s, publishing events); restart with a "
              f"full replay {full:.1f} s; restart from a snapshot a whole interval "
              f"({MARKET.snapshot_every:,}) before the end, replaying {replayed:,}: "
              f"{snapshot:.2f} s", flush=True)


async def recorder_figures(args: argparse.Namespace, url: str, server: PostgresServer) -> None:
    payloads = event_payloads(args.events)
    rows = Rows()
    for sequence, payload in enumerate(payloads, start=1):
        rows.add(sequence, decode_events(payload), payload.decode())
    limit_dsn = await fresh_database(server, "bench_limit")
    limit = await copy_limit(limit_dsn, rows.trades * max(1, 200_000 // max(1, len(rows.trades))))
    print(f"copy_records_to_table, trade rows: {limit:,.0f} rows/s — the limit here", flush=True)
    copy_rate, insert_rate, total = await write_path(await fresh_database(server, "bench_write"),
                                                     payloads, 2048)
    print(f"recorder write path, {len(payloads):,} events messages = {total:,} rows, batches "
          f"of 2,048: COPY {copy_rate:,.0f} rows/s, executemany {insert_rate:,.0f} rows/s "
          f"(COPY {copy_rate / insert_rate:.1f}×; {copy_rate / limit:.0%} of the limit)",
          flush=True)
    events_rate = await recorder_rate(url, await fresh_database(server, "bench_recorder"),
                                      payloads)
    rows_per_event = total / len(payloads)
    print(f"recorder end to end (events stream → PostgreSQL): {events_rate:,.0f} events "
          f"messages/s ≈ {events_rate * rows_per_event:,.0f} rows/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000,
                        help="events messages for the recorder figures")
    parser.add_argument("--commands", type=int, default=1_000_000,
                        help="history length for the recovery figures")
    parser.add_argument("--only", choices=["recorder", "recovery"],
                        help="run one part only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as directory:
        data = Path(directory)
        with NatsServer(data / "nats").start() as nats_server, \
                PostgresServer(data / "postgres").start() as postgres:
            asyncio.run(publish_markets(nats_server.url, [MARKET], StreamSettings()))
            uvloop.run(benchmark(args, nats_server.url, postgres))
    return 0


if __name__ == "__main__":
    sys.exit(main())
