"""The servers tradeplane starts: one process each, gone when stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_up import processes_mentioning
from tradeplane.postgres import PostgresServer
from tradeplane.processes import NatsServer


def test_a_started_nats_server_used_as_a_context_runs_once(tmp_path: Path) -> None:
    with NatsServer.secured(tmp_path / "nats").start() as server:
        assert server.url.startswith("nats://127.0.0.1:")
        assert len(processes_mentioning(str(tmp_path / "nats"))) == 1
    assert processes_mentioning(str(tmp_path / "nats")) == []


def test_a_started_postgres_used_as_a_context_runs_once(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg").start() as server:
        assert server.dsn.startswith("postgresql://postgres@127.0.0.1:")
        postmasters = [pid for pid in processes_mentioning(str(tmp_path / "pg" / "pgdata"))
                       if "postgres -D" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       .replace(b"\0", b" ").decode()]
        assert len(postmasters) == 1
    assert processes_mentioning(str(tmp_path / "pg" / "pgdata")) == []


def test_servers_take_relative_data_directories(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``tradeplane up --data-dir .tradeplane`` gives them."""
    monkeypatch.chdir(tmp_path)
    with NatsServer.secured(Path("relative") / "nats") as nats_server, \
            PostgresServer(Path("relative") / "pg") as postgres:
        assert nats_server.url
        assert postgres.dsn
