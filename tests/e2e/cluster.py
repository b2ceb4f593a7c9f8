"""The exchange as separate processes on real nats-server (one, or a JetStream cluster)
and PostgreSQL, for tests that kill parts of it: engine, recorder, gateway and auth
service run as ``tradeplane`` commands. ``OrderFlow`` and ``PacedFlow`` are the orders
those tests send."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
from nats.aio.client import Client

from tests.support.exchange import eventually, stream_commands
from tradeplane.processes import NatsCluster, NatsServer, spawn, stop
from tradeplane.up import publish_markets, wait_ready
from tradeplane.up_ledger import set_up_balances
from tradeplane_engine.connection import server_urls
from tradeplane_engine.core import Engine
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import MarketDefinition


@dataclass
class Cluster:
    url: str
    dsn: str
    definition: MarketDefinition
    logs: Path
    nc: Client
    server: NatsServer | NatsCluster
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    wrap: dict[str, list[str]] = field(default_factory=dict)
    """A command line to run a role's process under (``unshare ...``), by role."""
    settings: StreamSettings = field(default_factory=StreamSettings)
    """How the streams are stored (engines get ``--stream-replicas`` from it)."""
    ledger_shards: int = 0
    """With balances: the ledger's shards (its replicas are the roles ``ledger-...``; the
    gateway funds every order there and the recorder records them)."""

    @property
    def market(self) -> str:
        return self.definition.name

    def start(self, role: str) -> None:
        """Start a component; every role named ``engine...`` is an engine replica, ``auth``
        the auth service (traders' logins, with accounts in the database)."""
        secrets = self.server.secrets
        assert secrets is not None
        shards = ["--ledger-shards", str(self.ledger_shards)]
        if role.startswith("engine"):
            args = ["engine", "--market", self.market, "--replica", role,
                    "--stream-replicas", str(self.settings.replicas)]
        elif role.startswith("ledger"):
            args = ["ledger", "--shards", str(self.ledger_shards), "--replica", role,
                    "--stream-replicas", str(self.settings.replicas)]
        else:
            args = {"recorder": ["recorder", "--market", self.market, *shards],
                    "gateway": ["gateway", *shards],
                    "auth": ["auth", "--issuer-seed", str(secrets.issuer_seed),
                             "--system-credentials", str(secrets.credentials("sys"))]}[role]
        log = (self.logs / f"{role}.log").open("ab")
        identity = role.split("-")[0] if role.startswith(("engine", "ledger")) else role
        self.processes[role] = spawn(
            [*self.wrap.get(role, []), sys.executable, "-m", "tradeplane",
             "--nats", self.server.url,
             "--credentials", str(secrets.credentials(identity)), *args], log=log,
            env={**os.environ, "TRADEPLANE_POSTGRES_DSN": self.dsn, "PYTHONUNBUFFERED": "1"})

    def described(self, role: str, lines: int = 20) -> str:
        """Whether a role's process runs (or how it ended), and the end of its log: what
        a failing test says of a component that stopped answering."""
        process = self.processes.get(role)
        state = ("not started" if process is None else "running" if process.poll() is None
                 else f"exited with {process.returncode}")
        log_file = self.logs / f"{role}.log"
        tail = (log_file.read_text(errors="replace").splitlines()[-lines:]
                if log_file.exists() else [])
        return "\n".join([f"{role}: {state}; the end of its log:", *tail])

    def kill(self, role: str) -> None:
        """``kill -9``: no clean-up, no flush, nothing handed over."""
        process = self.processes.pop(role)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    async def engine_status(self, with_hash: bool = False, timeout: float = 10) -> dict[str, Any]:
        answer = await self.nc.request(f"tp.engine.{self.market}.status",
                                       b"hash" if with_hash else b"", timeout=timeout)
        result: dict[str, Any] = msgspec.json.decode(answer.data)
        return result

    async def replica_status(self, replica: str, with_hash: bool = False) -> dict[str, Any]:
        answer = await self.nc.request(f"tp.engine.{self.market}.{replica}.status",
                                       b"hash" if with_hash else b"", timeout=10)
        result: dict[str, Any] = msgspec.json.decode(answer.data)
        return result

    async def leader(self, timeout: float = 20, not_: str | None = None) -> str:
        """The replica that leads now (waiting for one, other than ``not_``)."""
        async def leading() -> str | None:
            status = await self.engine_status(timeout=1)
            return status["replica"] if status["role"] == "leader" else None

        return await _awaited_leader(leading, not_, timeout, "a leader")

    def signal(self, role: str, number: int) -> None:
        self.processes[role].send_signal(number)

    async def ledger_status(self, shard: int = 0, timeout: float = 10) -> dict[str, Any]:
        """What the leader of a ledger shard says of it, with its audit
        (``LedgerService.status``)."""
        answer = await self.nc.request(f"tp.ledger.{shard}.status", b'{"audit":true}',
                                       timeout=timeout)
        result: dict[str, Any] = msgspec.json.decode(answer.data)
        return result

    async def ledger_leader(self, shard: int = 0, timeout: float = 20,
                            not_: str | None = None) -> str:
        """The ledger replica that leads ``shard`` now (waiting for one, not ``not_``)."""
        async def leading() -> str | None:
            status = await self.ledger_status(shard, timeout=1)
            return status["replica"] if status["leading"] else None

        return await _awaited_leader(leading, not_, timeout,
                                     f"a leader of ledger shard {shard}")

    async def recorder_status(self) -> dict[str, Any]:
        answer = await self.nc.request(f"tp.recorder.{self.market}.status", b"", timeout=5)
        result: dict[str, Any] = msgspec.json.decode(answer.data)
        return result

    async def settled(self, timeout: float = 60) -> int:
        """Wait until the engine applied and the recorder wrote every command; how many.

        A request sent just before the load stopped may still be sequenced: wait until
        the count holds still across a whole round."""
        js = self.nc.jetstream()
        while True:
            commands = (await js.stream_info(f"tp-cmd-{self.market}")).state.last_seq
            await self._settled_at(commands, timeout)
            if (await js.stream_info(f"tp-cmd-{self.market}")).state.last_seq == commands:
                return commands

    async def _settled_at(self, commands: int, timeout: float) -> None:
        js = self.nc.jetstream()

        async def engine_done() -> bool:
            with contextlib.suppress(nats.errors.Error):
                status = await self.engine_status()
                return bool(status["ready"]) and status["sequence"] >= commands
            return False

        async def recorder_done() -> bool:
            with contextlib.suppress(nats.errors.Error):
                last = await js.get_last_msg(f"tp-evt-{self.market}",
                                             f"tp.evt.{self.market}")
                covered = int((last.headers or {}).get("Tp-Sequence", 0))
                return bool(covered >= commands and (await self.recorder_status())[
                    "recorded"] >= (last.seq or 0))
            return False

        try:
            await eventually(engine_done, timeout, "the engine applying every command")
            await eventually(recorder_done, timeout, "the recorder writing every event")
        except AssertionError as exc:
            events = (await js.stream_info(f"tp-evt-{self.market}")).state.last_seq
            raise AssertionError(
                f"{exc}: {commands} commands, {events} events messages, engine "
                f"{await self.engine_status()}, recorder {await self.recorder_status()}"
            ) from exc

    async def replayed_hash(self) -> str:
        """The state hash of the whole command stream applied from scratch."""
        engine = Engine(self.definition.spec())
        for command in await stream_commands(self.nc.jetstream(), self.market):
            engine.apply(command)
        return engine.state_hash()

    async def database(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)


async def _awaited_leader(leading: Callable[[], Awaitable[str | None]], not_: str | None,
                          timeout: float, what: str) -> str:
    """The replica ``leading`` names, once it names one other than ``not_``."""
    found: list[str] = []

    async def led() -> bool:
        with contextlib.suppress(nats.errors.Error):
            replica = await leading()
            if replica is not None and replica != not_:
                found.append(replica)
                return True
        return False

    await eventually(led, timeout, what)
    return found[-1]


@contextlib.asynccontextmanager
async def cluster(directory: Path, dsn: str, definition: MarketDefinition,
                  *, roles: tuple[str, ...] = ("engine", "recorder", "gateway"),
                  wrap: dict[str, list[str]] | None = None,
                  nats_nodes: int = 1, ledger_shards: int = 0) -> AsyncIterator[Cluster]:
    """The exchange on one nats-server, or on a cluster of ``nats_nodes`` with every
    stream and bucket replicated on each node; with ``ledger_shards``, balances (the
    roles ``ledger-...`` run the ledger's replicas; the market's assets are defined)."""
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = StreamSettings(replicas=nats_nodes)
    server: NatsServer | NatsCluster = (
        NatsServer.secured(directory / "nats") if nats_nodes == 1
        else NatsCluster.secured(directory / "nats", size=nats_nodes))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    nc: Client | None = None
    try:
        server.start()
        admin = server.access("admin")
        nc = await nats.connect(server_urls(server.url), **admin.options())
        # Test traders connect(cluster.url, account=...) as the admin, who may act as anyone.
        running = Cluster(server.url_as("admin"), dsn, definition, logs, nc, server,
                          processes, wrap=wrap or {}, settings=settings,
                          ledger_shards=ledger_shards)
        await publish_markets(server.url, [definition], settings, admin)
        for role in roles:
            running.start(role)
        await wait_ready(server.url, [definition.name], list(processes.values()),
                         access=admin)
        if ledger_shards:
            refused = await set_up_balances(server.url, admin, [definition], ledger_shards, [])
            assert not refused, refused
        yield running
    finally:
        for process in processes.values():
            stop(process)
        if nc is not None:
            await nc.close()
        server.stop()


class OrderFlow:
    """Orders placed one after another (``ack`` mode) until stopped, buys by one client
    and sells by another, around one price so that many cross. Remembers every client
    order id the exchange acknowledged."""

    def __init__(self, buyer: Any, seller: Any, market: str, prefix: str) -> None:
        self.buyer = buyer
        self.seller = seller
        self.market = market
        self.prefix = prefix
        self.acknowledged: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        number = 0
        while True:
            number += 1
            side = "buy" if number % 2 else "sell"
            price = str(100 + (number % 7) - 3)
            client_order_id = f"{self.prefix}-{number}"
            try:
                client = self.buyer if side == "buy" else self.seller
                await client.place(self.market, side, "0.5", price,
                                        client_order_id=client_order_id, response="ack")
            except Exception:  # an unacknowledged order may or may not be sequenced
                continue
            self.acknowledged.append(client_order_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def until(self, count: int, timeout: float = 60) -> None:
        await eventually(lambda: len(self.acknowledged) >= count, timeout,
                         f"{count} acknowledged orders")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


PACE = 0.02
"""Seconds between two orders of a ``PacedFlow`` (about 50 a second)."""


@dataclass
class Attempt:
    """One order of a ``PacedFlow``: when it was sent and answered (``time.monotonic``),
    and what the answer was."""

    client_order_id: str
    sent_at: float
    answered_at: float = 0.0
    acknowledged: bool = False
    error: str = ""


class PacedFlow:
    """An order every ``PACE`` seconds, alternately buys by one client and sells by
    another around one price (so that many cross), each in its own task: an order that
    waits for its answer holds up no other. Every attempt and its outcome is kept."""

    def __init__(self, buyer: Any, seller: Any, market: str, prefix: str) -> None:
        self.buyer = buyer
        self.seller = seller
        self.market = market
        self.prefix = prefix
        self.attempts: list[Attempt] = []
        self.acknowledged_at: list[float] = []
        self._sending: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def acknowledged(self) -> list[str]:
        return [attempt.client_order_id for attempt in self.attempts if attempt.acknowledged]

    async def _place(self, attempt: Attempt, number: int) -> None:
        client = self.buyer if number % 2 else self.seller
        try:
            await client.place(self.market, "buy" if number % 2 else "sell", "0.5",
                               str(100 + (number % 7) - 3),
                               client_order_id=attempt.client_order_id, response="ack")
        except Exception as exc:  # an unacknowledged order may or may not be sequenced
            attempt.error = f"{type(exc).__name__}: {exc}"
        else:
            attempt.acknowledged = True
            self.acknowledged_at.append(time.monotonic())
        attempt.answered_at = time.monotonic()

    async def _send(self) -> None:
        for number in itertools.count(1):
            attempt = Attempt(f"{self.prefix}-{number}", time.monotonic())
            self.attempts.append(attempt)
            task = asyncio.create_task(self._place(attempt, number))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            await asyncio.sleep(PACE)  # the pace of the load, not a synchronisation

    def start(self) -> None:
        self._sending = asyncio.create_task(self._send())

    async def until(self, count: int, timeout: float = 60) -> None:
        await eventually(lambda: len(self.acknowledged_at) >= count, timeout,
                         f"{count} acknowledged orders")

    async def stop(self) -> None:
        """Stop sending and wait for every answer (each ends within the SDK's timeout)."""
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
        await asyncio.gather(*self._in_flight)

    def failed_since(self, moment: float) -> list[Attempt]:
        """Attempts answered after ``moment`` without an acknowledgement."""
        return [attempt for attempt in self.attempts
                if attempt.answered_at > moment and not attempt.acknowledged]

    def longest_wait(self, since: float, until: float) -> float:
        """The longest an order acknowledged between ``since`` and ``until`` waited."""
        return max((attempt.answered_at - attempt.sent_at for attempt in self.attempts
                    if attempt.acknowledged and since < attempt.answered_at < until),
                   default=0.0)
