"""``tradeplane audit`` against a live exchange with two ledger shards and the ledger
recorder on real PostgreSQL: it passes on a healthy exchange, and fails when the
recorded journal no longer says what the ledger holds."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane.audit import audit
from tradeplane.cli import main
from tradeplane_engine.access import Access
from tradeplane_engine.ledger import shard_of
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.ledger_recorder import LedgerRecorder
from tradeplane_gateway import connect

ASSETS = {"SOL": 4, "USDT": 6}
USDT = 1_000_000
SOL_UNIT = 10_000


def test_audit_passes_on_a_healthy_exchange_and_fails_on_a_tampered_journal(
        tmp_path: Path, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert shard_of("alice", 2) != shard_of("bob", 2)  # a trade across the shards

    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL, ledger_shards=2,
                                  assets=ASSETS) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            recorders = [LedgerRecorder(exchange.nc, pool, shard) for shard in range(2)]
            tasks = [asyncio.create_task(recorder.run()) for recorder in recorders]
            try:
                await exchange.fund("alice", USDT=1_000 * USDT)
                await exchange.fund("bob", SOL=5 * SOL_UNIT)
                await bob.place("sol-usdt", "sell", "2", "100")
                take = await alice.place("sol-usdt", "buy", "1.5", "101")
                assert take.order is not None
                assert take.order.status == "filled"
                ledgers = [service.ledger for service in exchange.ledgers]
                await eventually(lambda: ledgers[shard_of("alice", 2)].balance(
                    "alice", "SOL") == (15_000, 0), what="settlement")

                out = io.StringIO()
                assert await audit(exchange.url, Access(), 2, database, out,
                                   timeout=10) == 0, out.getvalue()
                assert "audit passed: 2 ledger shards" in out.getvalue()
                # The command line, as an operator runs it (its own event loop).
                assert await asyncio.to_thread(main, [
                    "--nats", exchange.url, "audit", "--ledger-shards", "2",
                    "--postgres-dsn", database, "--timeout", "10"]) == 0
                assert "journal checked against the live balances" in capsys.readouterr().out

                async with pool.acquire() as connection:
                    await connection.execute(
                        "DELETE FROM ledger_journal WHERE ctid IN (SELECT ctid FROM"
                        " ledger_journal WHERE account = 'alice' AND kind = 'trade'"
                        " LIMIT 1)")
                out = io.StringIO()
                assert await audit(exchange.url, Access(), 2, database, out,
                                   timeout=10) == 1
                report = out.getvalue()
                assert "BREACH: shard 1: ledger_balances: alice " in report
                assert "BREACH: shard 1: alice live: alice " in report
                assert "audit failed" in report

                out = io.StringIO()
                assert await audit(exchange.url, Access(), 3, None, out, timeout=10) == 2
                assert "not 3" in out.getvalue() or "no answer" in out.getvalue()
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await pool.close()

    run(scenario())


def test_audit_without_shards_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--ledger-shards", "0"]) == 2
    assert "--ledger-shards must be 1 or more" in capsys.readouterr().out


def test_audit_of_an_exchange_it_cannot_reach_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nats", "nats://u:secret@127.0.0.1:1", "audit",
                 "--ledger-shards", "1"]) == 2
    out = capsys.readouterr().out
    assert "cannot reach NATS at nats://u:***@127.0.0.1:1" in out
