"""The ledger recorder against real nats-server and PostgreSQL: the journal sums to the
live balances, each command is recorded once, and what is not a ledger batch is
quarantined while recording goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane.postgres import PostgresServer
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.ledger import (
    AnyLedgerCommand,
    DefineAsset,
    Deposit,
    Fill,
    Ledger,
    Movement,
    MovementKind,
    Withdraw,
)
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.ledger_queries import (
    account_balances,
    account_journal,
    journal_sums,
    recorded_balances,
    recorded_through,
)
from tradeplane_engine.store.ledger_recorder import LedgerRecorder, checked, ledger_rows
from tradeplane_engine.store.recorders import run_recorders
from tradeplane_engine.streams import ensure_stream
from tradeplane_engine.wire import (
    LedgerBatch,
    encode_ledger_events,
    join_batches,
    ledger_event_subject,
)
from tradeplane_gateway import connect

ASSETS = {"SOL": 4, "USDT": 6}
USDT = 1_000_000
SOL_UNIT = 10_000
FEES = msgspec.structs.replace(SOL, fees={"makerBps": 10, "takerBps": 20})


@contextlib.asynccontextmanager
async def recording(recorder: LedgerRecorder) -> AsyncIterator[LedgerRecorder]:
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def skipped() -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total",
                                     {"component": "recorder", "what": "ledger events"}) or 0.0


def live(ledger: Ledger) -> dict[tuple[str, str], tuple[int, int]]:
    return {key: (balance.available, balance.held)
            for key, balance in ledger.balances.items()
            if balance.available or balance.held}


def nonzero(sums: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str],
                                                                   tuple[int, int]]:
    return {key: value for key, value in sums.items() if value != (0, 0)}


def test_the_journal_of_a_session_sums_to_the_live_balances(tmp_path: Path,
                                                            database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, FEES, ledger_shards=1,
                                  assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            ledger = exchange.ledgers[0].ledger
            async with recording(LedgerRecorder(exchange.nc, pool, 0, batch=4)) as recorder:
                await exchange.fund("alice", USDT=1_000 * USDT)
                await exchange.fund("alice", USDT=1_000 * USDT)  # the same transfer: once
                await exchange.fund("bob", SOL=5 * SOL_UNIT)
                ask = await bob.place("sol-usdt", "sell", "2", "100", client_order_id="ask")
                assert ask.order is not None
                take = await alice.place("sol-usdt", "buy", "1.5", "101")
                assert take.order is not None
                assert take.order.status == "filled"
                await alice.place("sol-usdt", "buy", "1", "95", client_order_id="rest")
                await bob.cancel("sol-usdt", ask.order.order_id)
                await eventually(lambda: ledger.balance("bob", "SOL") == (35_000, 0),
                                 what="the cancel's release")
                await exchange.ledger(Withdraw(0, 0, transfer_id="w1", account="bob",
                                               asset="USDT", amount=10 * USDT))
                await eventually(lambda: recorder.sequence == ledger.sequence,
                                 what="the recorder catching up")
            # Started again, it resumes where the database is: nothing twice.
            async with recording(LedgerRecorder(exchange.nc, pool, 0)) as again:
                await exchange.fund("bob", USDT=3 * USDT)
                await eventually(lambda: again.sequence == ledger.sequence,
                                 what="the restarted recorder catching up")
            assert ledger.audit() == []
            async with pool.acquire() as connection:
                assert nonzero(await journal_sums(connection, 0)) == live(ledger)
                assert nonzero(await recorded_balances(connection, 0)) == live(ledger)
                kinds = {row["kind"] for row in await connection.fetch(
                    "SELECT DISTINCT kind FROM ledger_journal")}
                assert kinds == {"deposit", "withdrawal", "hold", "release", "trade", "fee"}
                deposits = await connection.fetchval(
                    "SELECT count(*) FROM ledger_journal WHERE account = 'alice'"
                    " AND kind = 'deposit'")
                assert deposits == 1
                balances = await account_balances(connection, "alice")
                assert {row["asset"]: (int(row["available"]), int(row["held"]))
                        for row in balances["balances"]} == ledger.account_balances("alice")
                first = await account_journal(connection, "alice", limit=3)
                rest = await account_journal(connection, "alice", before=first["next"],
                                             limit=500)
                entries = first["entries"] + rest["entries"]
                keys = [(entry["sequence"], entry["index"]) for entry in entries]
                assert keys == sorted(keys, reverse=True)
                assert len(keys) == len(set(keys)) == await connection.fetchval(
                    "SELECT count(*) FROM ledger_journal WHERE account = 'alice'")
        await pool.close()

    run(scenario())


def test_what_is_not_the_next_command_is_quarantined_and_recording_goes_on(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        ledger = Ledger(0, 1)
        commands: list[AnyLedgerCommand] = [
            DefineAsset(0, 0, asset="USDT", decimals=6),
            Deposit(0, 0, transfer_id="d1", account="alice", asset="USDT", amount=500),
            Deposit(0, 0, transfer_id="d2", account="bob", asset="USDT", amount=70),
            Withdraw(0, 0, transfer_id="w1", account="alice", asset="USDT", amount=120),
            Deposit(0, 0, transfer_id="d3", account="carol", asset="USDT", amount=9)]
        batches = []
        for sequence, command in enumerate(commands, start=1):
            stamped: AnyLedgerCommand = msgspec.structs.replace(command, sequence=sequence,
                                                                timestamp=sequence)
            batches.append(encode_ledger_events(LedgerBatch(0, sequence, sequence,
                                                            ledger.apply(stamped))))
        foreign = encode_ledger_events(LedgerBatch(1, 4, 4, []))
        ahead = encode_ledger_events(LedgerBatch(0, 9, 9, []))
        # Stream order: 1 2 3 (a message each, as the shard wrote before it grouped
        # them), garbage, a copy of 2, shard 1's, a skip ahead, then 4 and 5 in one.
        stream = [*batches[:3], b"{not json", join_batches([batches[1]]), foreign,
                  ahead, join_batches(batches[3:])]
        async with local_exchange(tmp_path) as exchange:
            js = exchange.nc.jetstream()
            for config in SETTINGS.ledger_stream_configs(0):
                await ensure_stream(js, config)
            before = skipped()
            async with recording(LedgerRecorder(exchange.nc, pool, 0, batch=2)) as first, \
                    recording(LedgerRecorder(exchange.nc, pool, 0, batch=3)) as second:
                for payload in stream[:6]:
                    await js.publish(ledger_event_subject(0), payload)
                await eventually(lambda: first.position == 6 or second.position == 6,
                                 what="a recorder past the garbage")
                for payload in stream[6:]:
                    await js.publish(ledger_event_subject(0), payload)
                await eventually(lambda: first.position == second.position == len(stream),
                                 what="both recorders at the stream's end")
            async with pool.acquire() as connection:
                journal = await connection.fetch(
                    "SELECT sequence, account, available_delta FROM ledger_journal"
                    " ORDER BY sequence, index")
                assert [(row["sequence"], row["account"], int(row["available_delta"]))
                        for row in journal] == [
                    (2, "$world", -500), (2, "alice", 500), (3, "$world", -70),
                    (3, "bob", 70), (4, "alice", -120), (4, "$world", 120),
                    (5, "$world", -9), (5, "carol", 9)]
                assert nonzero(await recorded_balances(connection, 0)) == live(ledger)
                quarantined = await connection.fetch(
                    "SELECT stream_sequence, reason FROM ledger_quarantine"
                    " ORDER BY stream_sequence")
                assert [row["stream_sequence"] for row in quarantined] == [4, 5, 6, 7]
                reasons = [row["reason"] for row in quarantined]
                assert "duplicate command sequence 2" in reasons[1]
                assert "ledger shard 1" in reasons[2]
                assert "skips ahead" in reasons[3]
                position = await connection.fetchrow("SELECT * FROM ledger_positions")
                assert (position["stream_sequence"], position["sequence"]) == (len(stream), 5)
            # Both recorders refused each bad message, but it is recorded once.
            assert skipped() - before >= 4
        await pool.close()

    run(scenario())


def test_a_fill_is_journaled_leg_by_leg_at_its_place_among_the_events() -> None:
    fill = Fill("alice", "m", 7, "BTC", "USDT", True, 1_000, 50, 2, 10)
    hold = Movement(MovementKind.HOLD, "bob", "USDT", -5, 5, "m", 0, "b1")
    data = encode_ledger_events([LedgerBatch(0, 1, 11, [hold, fill, hold])])
    rows = ledger_rows(0, 0, 0, [SequencedCommand(4, 11, data, None)])
    assert [(row[2], row[4], row[5], row[6], row[7], row[8]) for row in rows.journal] == [
        (0, "hold", "bob", "USDT", -5, 5), (1, "trade", "alice", "USDT", 0, -1_000),
        (2, "fee", "alice", "USDT", 0, -2), (3, "trade", "alice", "BTC", 50, 0),
        (4, "release", "alice", "USDT", 10, -10), (5, "hold", "bob", "USDT", -5, 5)]
    assert rows.balances[("alice", "USDT")] == [10, -1_012, 1]


@pytest.mark.parametrize("fill", [
    Fill("alice", "m", 7, "BTC", "USDT", True, 10**40, 1, 0, 0),
    Fill("alice", "m", 7, "BTC", "USDT", False, 1, -1, 0, 0),
    Fill("alice", "m", -1, "BTC", "USDT", True, 1, 1, 0, 0),
    Fill("al\x00ice", "m", 7, "BTC", "USDT", True, 1, 1, 0, 0)])
def test_a_fill_the_journal_cannot_hold_is_refused(fill: Fill) -> None:
    with pytest.raises(ValueError, match="a fill out of range"):
        checked(0, 0, encode_ledger_events([LedgerBatch(0, 1, 1, [fill])]))


def test_the_recorder_process_records_the_ledger_through_a_database_outage(
        tmp_path: Path, database: str, postgres_server: PostgresServer) -> None:
    async def recorded(ledger: Ledger) -> bool:
        connection = await asyncpg.connect(database)
        try:
            return await recorded_through(connection, 0) == ledger.sequence
        finally:
            await connection.close()

    async def scenario() -> None:
        await (await open_database(database)).close()  # migrated before it is read
        async with local_exchange(tmp_path, ledger_shards=1, assets=ASSETS) as exchange:
            server, ledger = exchange.server, exchange.ledgers[0].ledger
            process = asyncio.create_task(run_recorders(
                server.url, None, database, SETTINGS, access=server.access("recorder"),
                ledger_shards=1))
            try:
                await exchange.fund("alice", USDT=10 * USDT)
                await eventually(lambda: recorded(ledger), what="the first deposit recorded")
                postgres_server.stop()
                try:  # the ledger goes on without the database
                    await exchange.fund("bob", USDT=20 * USDT)
                    await exchange.fund("carol", SOL=3 * SOL_UNIT)
                finally:
                    postgres_server.start()
                await exchange.fund("dave", SOL=SOL_UNIT)
                await eventually(lambda: recorded(ledger), timeout=15,
                                 what="the recorder catching up after the outage")
            finally:
                process.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await process
            connection = await asyncpg.connect(database)
            try:
                assert nonzero(await journal_sums(connection, 0)) == live(ledger)
                assert nonzero(await recorded_balances(connection, 0)) == live(ledger)
            finally:
                await connection.close()

    run(scenario())
