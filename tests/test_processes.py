"""The servers tradeplane starts: one process each, gone when stopped."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.test_up import processes_mentioning
from tradeplane.postgres import PostgresServer
from tradeplane.processes import NatsCluster, NatsServer, StartError
from tradeplane_engine.connection import server_urls


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


def test_postgres_runs_in_a_data_directory_deeper_than_a_socket_path_allows(
        tmp_path: Path) -> None:
    """A Unix-domain socket's path has at most 107 bytes; the server listens on TCP only,
    so ``tradeplane up --data-dir`` may be anywhere."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with PostgresServer(deep / "pg").start() as server:
        assert len(str(deep)) > 107
        assert server.dsn.startswith("postgresql://postgres@127.0.0.1:")


def test_servers_take_relative_data_directories(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``tradeplane up --data-dir .tradeplane`` gives them."""
    monkeypatch.chdir(tmp_path)
    with NatsServer.secured(Path("relative") / "nats") as nats_server, \
            PostgresServer(Path("relative") / "pg") as postgres:
        assert nats_server.url
        assert postgres.dsn


def test_a_nats_cluster_runs_three_routed_nodes_and_stops_them_all(tmp_path: Path) -> None:
    with NatsCluster.secured(tmp_path / "nats") as nodes:
        urls = server_urls(nodes.url)
        assert len(urls) == 3
        assert len(set(urls)) == 3
        assert len(processes_mentioning(str(tmp_path / "nats"))) == 3
        assert nodes.leaders()["meta"] in {"n1", "n2", "n3"}  # JetStream clustered
        assert all(node.healthy() for node in nodes.nodes)
    assert processes_mentioning(str(tmp_path / "nats")) == []


def test_a_nats_cluster_that_cannot_start_stops_the_nodes_it_started(tmp_path: Path) -> None:
    nodes = NatsCluster.secured(tmp_path / "nats")
    last = nodes.nodes[-1].membership
    assert last is not None
    with socket.socket() as taken:  # the last node's route port is someone else's
        taken.bind(("127.0.0.1", last.cluster_port))
        taken.listen()
        with pytest.raises(StartError):
            nodes.start(timeout=10, attempts=1)
    assert processes_mentioning(str(tmp_path / "nats")) == []


def test_a_nats_cluster_whose_route_port_was_taken_starts_on_others(tmp_path: Path) -> None:
    """A port found free may be someone else's by the time its node binds it (another
    test's server): a first start chooses the route ports again."""
    nodes = NatsCluster.secured(tmp_path / "nats")
    last = nodes.nodes[-1].membership
    assert last is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", last.cluster_port))
        taken.listen()
        with nodes:
            now = nodes.nodes[-1].membership
            assert now is not None
            assert now.cluster_port != last.cluster_port
            assert all(node.healthy() for node in nodes.nodes)
            assert nodes.leaders()["meta"] in {"n1", "n2", "n3"}
    assert processes_mentioning(str(tmp_path / "nats")) == []


@pytest.mark.parametrize(("servers", "urls"), [
    ("nats://a:4222", ["nats://a:4222"]),
    ("nats://a:4222,nats://b:4222, nats://c:4222", ["nats://a:4222", "nats://b:4222",
                                                    "nats://c:4222"]),
    (["nats://a:4222", "nats://b:4222"], ["nats://a:4222", "nats://b:4222"]),
], ids=["one", "a comma-separated list", "a list"])
def test_nats_urls_may_name_every_node(servers: str | list[str], urls: list[str]) -> None:
    assert server_urls(servers) == urls
