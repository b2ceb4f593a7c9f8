"""``tradeplane up`` as a newcomer runs it: starts, serves orders, restarts where it left
off, and stops on Ctrl-C leaving no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if text in command_line and state != "Z":
            found.append(int(entry.name))
    return found


class Output:
    """A process's output, read by a thread as it comes (a pipe nobody reads stops its
    writer once full), for tests to wait for lines of it."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._read = 0
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def read_until(self, text: str, timeout: float = 60) -> str:
        """The lines not read yet up to the first that contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._read, len(self.lines)):
                    if text in self.lines[index]:
                        seen, self._read = self.lines[self._read:index + 1], index + 1
                        return "".join(seen)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    raise AssertionError(f"no {text!r} in the output of up: "
                                         f"{''.join(self.lines[self._read:])}")
                self._changed.wait(left)

    def ended(self, timeout: float) -> None:
        self._thread.join(timeout)


OUTPUT: dict[int, Output] = {}
"""By process id: the output of each ``tradeplane up`` running."""


@contextmanager
def tradeplane_up(data_dir: Path, *extra: str, env: dict[str, str] | None = None,
                  sigint_ignored: bool = False,
                  ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``tradeplane up`` running, and its NATS URL; Ctrl-C (SIGINT) at the end, and it
    must stop within 30 s. If it does not, the failure shows the end of its output and
    the stack of each of its threads (SIGUSR1, see ``tradeplane.up``). With
    ``sigint_ignored`` it starts with SIGINT ignored, as a background job of a script
    does."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [sys.executable, "-m", "tradeplane", "up", "--port", "0", "--data-dir", str(data_dir),
         "-f", str(ROOT / "examples" / "markets"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        preexec_fn=ignore_sigint if sigint_ignored else None,
    )
    assert process.stdout is not None
    output = OUTPUT[process.pid] = Output(process.stdout)
    try:
        banner = output.read_until("tradeplane is up: NATS at ")
        match = re.search(r"tradeplane is up: NATS at (\S+)", banner)
        assert match, banner
        url = match.group(1)
        ADMIN[url] = admin_environment(data_dir)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGUSR1)
                # Its stacks, if it writes them: the main thread's ends at runpy's
                # entry (it runs as ``python -m tradeplane``).
                with contextlib.suppress(AssertionError):
                    output.read_until("_run_module_as_main", timeout=5)
                process.kill()
                process.wait()
                output.ended(5)
                raise AssertionError("tradeplane up did not stop within 30 s of Ctrl-C; "
                                     "its last output, and its threads' stacks:\n"
                                     + "".join(output.lines[-120:])) from None
        del OUTPUT[process.pid]


ADMIN: dict[str, dict[str, str]] = {}
"""By NATS URL: the administrator's settings that ``tradeplane up`` wrote (admin.env)."""


def admin_environment(data_dir: Path) -> dict[str, str]:
    """``<data dir>/security/admin.env``, as ``set -a; . admin.env`` would read it."""
    text = (data_dir / "security" / "admin.env").read_text()
    return {name: shlex.split(value)[0]
            for name, value in (line.split("=", 1) for line in text.splitlines())}


def cli(url: str, *args: str, as_admin: bool = True) -> subprocess.CompletedProcess[str]:
    """A CLI command, with the administrator's settings (or none: give --credentials)."""
    environment = {**os.environ, **(ADMIN[url] if as_admin else {})}
    return subprocess.run([sys.executable, "-m", "tradeplane", "--nats", url, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
                          env=environment)


def poll_cli(url: str, ready: Callable[[dict[str, Any]], bool], *args: str,
             timeout: float = 30) -> dict[str, Any]:
    """Run a CLI command until its JSON reply satisfies ``ready`` (the recorder may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        result = cli(url, *args)
        reply: dict[str, Any] = {}
        if result.returncode == 0:
            reply = json.loads(result.stdout)
            if ready(reply):
                return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"{args}: {result.stdout}{result.stderr}")
        time.sleep(0.2)


def test_up_serves_orders_restarts_where_it_stopped_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "exchange"
    with tradeplane_up(data_dir) as (process, url):
        # As the banner says: the administrator issues alice's login, alice trades with it.
        login = tmp_path / "alice.json"
        created = cli(url, "accounts", "create", "alice", "--output", str(login))
        assert created.returncode == 0, created.stdout + created.stderr
        assert login.stat().st_mode & 0o777 == 0o600
        unfunded = cli(url, "--credentials", str(login), "order", "place", "sol-usdt", "sell",
                       "2", "150", as_admin=False)
        assert "501 INSUFFICIENT_FUNDS" in unfunded.stdout, unfunded.stdout + unfunded.stderr
        # As the banner says: the administrator funds the accounts (balances are on).
        for account, asset, amount in (("alice", "SOL", "10"), ("bob", "USDT", "1000")):
            funded = cli(url, "deposit", account, asset, amount, "--transfer-id",
                         f"{account}-{asset}")
            assert funded.returncode == 0, funded.stdout + funded.stderr
        again = cli(url, "deposit", "alice", "SOL", "10", "--transfer-id", "alice-SOL")
        assert "Duplicate" in again.stdout, again.stdout  # a retried transfer: applied once
        placed = cli(url, "--credentials", str(login), "order", "place", "sol-usdt", "sell",
                     "2", "150", as_admin=False)
        assert placed.returncode == 0, placed.stdout + placed.stderr
        assert json.loads(placed.stdout)["order"]["status"] == "new"
        crossed = cli(url, "order", "place", "sol-usdt", "buy", "0.5", "151", "--account", "bob")
        assert json.loads(crossed.stdout)["fills"][0]["price"] == "150"
        balance = cli(url, "--credentials", str(login), "balance", as_admin=False)
        assert re.search(r"SOL\s+8\s+1.5\n", balance.stdout), balance.stdout
        assert re.search(r"USDT\s+75\s+0\n", balance.stdout), balance.stdout
        refused = cli(url, "order", "place", "sol-usdt", "buy", "1", "150.001",
                      "--account", "bob")
        assert refused.returncode == 2
        assert "203 PRICE_NOT_ON_TICK" in refused.stdout
        book = cli(url, "book", "sol-usdt", "--once")
        assert re.search(r"150\s+1.5\s+ask", book.stdout), book.stdout
        status = cli(url, "status")  # the off-tick order never reached the stream
        assert re.search(r"sol-usdt\s+SOL-USDT\s+open\s+2\s+1\s+1\s+engine-1a \(\w+, 0\), "
                         r"engine-1b \(\w+, 0\)", status.stdout), status.stdout
        switched = cli(url, "failover", "sol-usdt")  # to the caught-up standby
        assert re.search(r"engine-1[ab] handed over to engine-1[ab] \(epoch 2\)",
                         switched.stdout), switched.stdout + switched.stderr
        killed = cli(url, "chaos", "kill-leader", "sol-usdt")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert re.search(r"engine-1[ab] leads \(epoch 3\) after \d+ ms", killed.stdout), \
            killed.stdout
        survived = cli(url, "order", "place", "sol-usdt", "buy", "0.5", "151", "--account", "bob")
        assert json.loads(survived.stdout)["fills"][0]["tradeId"] == 2
        assert processes_mentioning(str(data_dir))  # nats-server runs from the data dir
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    assert processes_mentioning(str(data_dir)) == []
    assert processes_mentioning(url) == []

    with tradeplane_up(data_dir) as (process, url):
        book = cli(url, "book", "sol-usdt", "--once")
        assert re.search(r"150\s+1\s+ask", book.stdout), book.stdout
        again = cli(url, "order", "place", "sol-usdt", "buy", "0.5", "151", "--account", "bob")
        assert json.loads(again.stdout)["fills"][0]["tradeId"] == 3
        # PostgreSQL kept the first run's trades, and the recorder serves them.
        trades = poll_cli(url, lambda reply: len(reply.get("trades", [])) == 3,
                          "order", "trades", "sol-usdt", "--account", "bob")
        assert [trade["tradeId"] for trade in trades["trades"]] == [3, 2, 1]
    assert processes_mentioning(str(data_dir)) == []


def test_up_demo_trades_by_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    with tradeplane_up(data_dir, "--demo") as (_, url):
        trades = cli(url, "trades", "sol-usdt", "--count", "1")
        assert trades.returncode == 0, trades.stderr
        assert re.search(r"\d+\s+(buy|sell)\s+", trades.stdout), trades.stdout
        # The market maker requotes every half second (cancel all, then level by level):
        # a view can fall between its cancel and its asks.
        deadline = time.monotonic() + 20
        book = cli(url, "book", "btc-usdt", "--once")
        while not ("bid" in book.stdout and "ask" in book.stdout) and (
                time.monotonic() < deadline):
            book = cli(url, "book", "btc-usdt", "--once")
        assert "bid" in book.stdout, book.stdout
        assert "ask" in book.stdout, book.stdout
    assert processes_mentioning(str(data_dir)) == []


def test_ctrl_c_stops_up_even_when_its_starter_ignores_sigint(tmp_path: Path) -> None:
    """A process started with SIGINT ignored keeps it ignored unless it says otherwise
    (a background job of a shell script, and all it starts): ``up`` still stops on
    Ctrl-C, with everything it started."""
    data_dir = tmp_path / "exchange"
    with tradeplane_up(data_dir, sigint_ignored=True) as (process, _):
        assert process.poll() is None
    assert process.returncode == 0
    assert processes_mentioning(str(data_dir)) == []


def _read_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """``up``'s output not read yet, up to the first line that contains ``text``."""
    return OUTPUT[process.pid].read_until(text, timeout)


def _recovered(url: str, account: str) -> None:
    """Until an order of ``account`` is accepted again."""
    poll_cli(url, lambda reply: reply.get("order") is not None, "order", "place", "sol-usdt",
             "buy", "0.5", "140", "--account", account, timeout=60)


def test_up_brings_back_nats_server_and_postgres_when_they_die(tmp_path: Path) -> None:
    """kill -9 of nats-server, then of PostgreSQL, under the demo traders: ``up`` starts
    each again on its port with its data, and the exchange serves and records again
    with no manual step."""
    data_dir = tmp_path / "exchange"
    with tradeplane_up(data_dir, "--demo") as (process, url):
        for account, asset in (("carol", "USDT"), ("dave", "SOL")):
            funded = cli(url, "deposit", account, asset, "1000", "--transfer-id", account)
            assert funded.returncode == 0, funded.stdout + funded.stderr
        _recovered(url, "carol")  # serving before anything dies

        [nats_server] = [pid for pid in processes_mentioning(str(data_dir / "nats"))
                         if "nats-server" in Path(f"/proc/{pid}/cmdline").read_text()]
        killed_at = time.monotonic()
        os.kill(nats_server, signal.SIGKILL)
        _read_until(process, "nats-server exited")
        _read_until(process, "nats-server is back")
        _recovered(url, "carol")
        print(f"orders accepted again {time.monotonic() - killed_at:.1f} s after the kill "
              "of nats-server")

        postmaster = min(pid for pid in processes_mentioning(str(data_dir / "postgres"))
                         if "-D" in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(postmaster, signal.SIGKILL)
        _read_until(process, "postgres exited")
        _read_until(process, "postgres is back")
        sold = cli(url, "order", "place", "sol-usdt", "sell", "0.5", "140", "--account", "dave")
        assert sold.returncode == 0, sold.stdout + sold.stderr
        assert json.loads(sold.stdout)["fills"], sold.stdout  # crossed carol's bids
        # The recorder wrote the trade into the PostgreSQL that came back.
        poll_cli(url, lambda reply: len(reply.get("trades", [])) >= 1,
                 "order", "trades", "sol-usdt", "--account", "dave", timeout=60)
        assert process.poll() is None
    assert processes_mentioning(str(data_dir)) == []
