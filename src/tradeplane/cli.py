"""The ``tradeplane`` command: one entry point for every component and for newcomers.

    tradeplane up [--demo]              the whole exchange on this machine
    tradeplane engine --market M ...    an engine process (what a pod runs)
    tradeplane gateway                  a gateway process
    tradeplane recorder [--market M]    a recorder process (every market if none named)
    tradeplane ledger [--shard K]       a ledger process: balances (docs/ledger.md)
    tradeplane deposit|withdraw|asset   an administrator's ledger commands
    tradeplane balance                  an account's balances
    tradeplane order place|cancel|replace|cancel-all|status ...
    tradeplane book MARKET              a live L2 view
    tradeplane trades MARKET            public trades as they happen
    tradeplane status                   every market and its engine
    tradeplane audit --ledger-shards N  prove the ledger's balances, live and recorded
    tradeplane demo                     the engine core alone on the standard workload
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats

from tradeplane import __version__
from tradeplane_engine.access import Access, AccessError

if TYPE_CHECKING:
    from tradeplane_shared.health import ServiceHealth

DEFAULT_NATS = os.environ.get("TRADEPLANE_NATS", "nats://127.0.0.1:4222")


def _ledger_shards() -> int:
    return int(os.environ.get("TRADEPLANE_LEDGER_SHARDS") or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeplane",
        description="A Kubernetes-native, operator-managed cryptocurrency exchange.",
    )
    parser.add_argument("--version", action="version", version=f"tradeplane {__version__}")
    parser.add_argument("--nats", default=DEFAULT_NATS,
                        help="NATS server URL (default: $TRADEPLANE_NATS or %(default)s)")
    parser.add_argument("--credentials", default=os.environ.get("TRADEPLANE_CREDENTIALS"),
                        help="NATS credentials file, a service's or a trader's "
                             "(default: $TRADEPLANE_CREDENTIALS; docs/security.md)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _up_command(commands)
    _service_commands(commands)
    _trading_commands(commands)
    _operations_commands(commands)
    _demo_command(commands)
    _security_commands(commands)
    from tradeplane.funds import add_commands

    add_commands(commands)
    return parser


def _up_command(commands: Any) -> None:
    """``up``: the whole exchange on this machine, for newcomers and demos."""
    up = commands.add_parser("up", help="start the whole exchange on this machine")
    up.add_argument("-f", "--filename", action="append", type=Path, dest="manifests",
                    help="Market manifest file or directory (default: examples/markets)")
    up.add_argument("--data-dir", type=Path, default=Path(".tradeplane"),
                    help="where NATS keeps its streams and the logs go (default: %(default)s)")
    up.add_argument("--port", type=int, default=4222,
                    help="NATS client port (default: %(default)s; 0: any free port)")
    up.add_argument("--engines", type=int, default=1,
                    help="groups of engine processes to spread the markets over "
                         "(default: %(default)s)")
    up.add_argument("--replicas", type=int, default=2,
                    help="engine replicas of each market, a leader and standbys "
                         "(default: %(default)s)")
    up.add_argument("--postgres-dsn", default=os.environ.get("TRADEPLANE_POSTGRES_DSN"),
                    help="use this PostgreSQL instead of starting one (default: "
                         "$TRADEPLANE_POSTGRES_DSN, else an embedded server in the data dir)")
    up.add_argument("--demo", action="store_true",
                    help="also run a market maker and takers so the books are alive")
    up.add_argument("--ledger-shards", type=int, default=1,
                    help="ledger shards keeping balances (default: %(default)s; 0: no "
                         "balances, orders are not funded)")


def _service_commands(commands: Any) -> None:
    """``engine``, ``gateway``, ``operator`` and ``recorder``: what a pod runs."""
    engine = commands.add_parser("engine", help="run the engines of the given markets")
    engine.add_argument("--market", action="append", required=True, dest="markets")
    engine.add_argument("--replica", help="this replica's name (default: host-pid; on "
                                          "Kubernetes, the pod name)")
    engine.add_argument("--stream-replicas", type=int, default=1,
                        help="JetStream replicas of each stream (3 on a NATS cluster)")
    engine.add_argument("--command-retention", type=int, default=0,
                        help="commands each command stream keeps (0: all; at least 3 × the "
                             "market's snapshotEvery)")
    engine.add_argument("--events-max-age", type=float, default=0,
                        help="seconds each events stream keeps its messages (0: all)")
    engine.add_argument("--health-port", type=int,
                        default=os.environ.get("TRADEPLANE_HEALTH_PORT"),
                        help="serve /livez and /readyz for Kubernetes probes, and /metrics "
                             "for Prometheus, on this port (default: "
                             "$TRADEPLANE_HEALTH_PORT, else none)")

    gateway = commands.add_parser(
        "gateway", help="serve order entry (any number, one queue group)")
    gateway.add_argument("--metrics-port", type=int, default=0,
                         help="serve /livez, /readyz (ready once connected to NATS and "
                              "serving) and Prometheus metrics on this port (0: none)")
    gateway.add_argument("--ledger-shards", type=int, default=_ledger_shards(),
                         help="fund every order at the ledger's shards first (balances, "
                              "docs/ledger.md; default: $TRADEPLANE_LEDGER_SHARDS or 0, none)")

    operator = commands.add_parser(
        "operator", help="run the Kubernetes operator: Market resources become engine pods "
                         "(settings from $TRADEPLANE_*, see docs/operator.md)")
    operator.add_argument("--liveness-port", type=int, default=8080,
                          help="serve /healthz for the operator's liveness probe "
                               "(default: %(default)s; 0: none)")
    operator.add_argument("--metrics-port", type=int, default=0,
                          help="serve Prometheus metrics on this port (0: none)")

    ledger = commands.add_parser(
        "ledger", help="run replicas of ledger shards: balances, holds, settlement "
                       "(docs/ledger.md)")
    ledger.add_argument("--shard", type=int, action="append", dest="shards_run",
                        help="a shard to run (repeatable; default: every shard)")
    ledger.add_argument("--shards", type=int, default=_ledger_shards() or 1,
                        help="how many shards the ledger has (default: "
                             "$TRADEPLANE_LEDGER_SHARDS or 1)")
    ledger.add_argument("--replica", help="this replica's name (default: host-pid)")
    ledger.add_argument("--stream-replicas", type=int, default=1,
                        help="JetStream replicas of each stream (3 on a NATS cluster)")
    ledger.add_argument("--health-port", type=int,
                        default=os.environ.get("TRADEPLANE_HEALTH_PORT"),
                        help="serve /livez, /readyz and /metrics on this port")

    recorder = commands.add_parser(
        "recorder", help="record markets into PostgreSQL, take snapshots, answer history "
                         "queries ($TRADEPLANE_POSTGRES_DSN)")
    recorder.add_argument("--market", action="append", dest="markets",
                          help="a market to record (repeatable; default: every market in "
                               "the markets bucket, started and stopped as markets are "
                               "defined and deleted)")
    recorder.add_argument("--metrics-port", type=int, default=0,
                          help="serve /livez, /readyz (ready once connected to NATS and "
                               "the database) and Prometheus metrics (the recorder's lag "
                               "and writes) on this port")
    recorder.add_argument("--ledger-shards", type=int, default=_ledger_shards(),
                          help="also record the journal and balances of this many ledger "
                               "shards (default: $TRADEPLANE_LEDGER_SHARDS, else 0: none)")


def _trading_commands(commands: Any) -> None:
    """``order``, ``book``, ``trades`` and ``status``: a trader's view of the exchange."""
    _order_actions(commands.add_parser(
        "order", help="place, cancel, replace or look up orders"))

    book = commands.add_parser("book", help="a live view of a market's L2 book")
    book.add_argument("market")
    book.add_argument("--depth", type=int, default=10)
    book.add_argument("--once", action="store_true", help="print it once and exit")

    trades = commands.add_parser("trades", help="a market's public trades as they happen")
    trades.add_argument("market")
    trades.add_argument("--count", type=int, default=0, help="exit after this many trades")

    commands.add_parser("status", help="every market, its leader and its replicas")


def _order_actions(order: argparse.ArgumentParser) -> None:
    """``order place|cancel|replace|status|open|trades|cancel-all``."""
    actions = order.add_subparsers(dest="action", required=True, metavar="ACTION")
    place = actions.add_parser("place", help="a new order")
    place.add_argument("market")
    place.add_argument("side", choices=["buy", "sell"])
    place.add_argument("quantity", nargs="?", help="decimal quantity (omit with --quote-amount)")
    place.add_argument("price", nargs="?", help="decimal limit price (omit for --type market)")
    place.add_argument("--type", choices=["limit", "market"], default="limit")
    place.add_argument("--time-in-force", choices=["GTC", "IOC", "FOK"])
    place.add_argument("--post-only", action="store_true")
    place.add_argument("--quote-amount", help="market buys: spend this much quote")
    place.add_argument("--client-order-id")
    for name, extra in (("cancel", "cancel one order"), ("replace", "change price/quantity"),
                        ("status", "an order's current state")):
        action = actions.add_parser(name, help=extra)
        action.add_argument("market")
        action.add_argument("--order-id", type=int)
        action.add_argument("--client-order-id")
        if name == "replace":
            action.add_argument("--price")
            action.add_argument("--quantity", help="new total quantity")
    open_orders = actions.add_parser("open", help="the account's open orders")
    open_orders.add_argument("market")
    history = actions.add_parser("trades", help="the account's trades, newest first")
    history.add_argument("market")
    history.add_argument("--before", type=int, help="trade id to page back from")
    history.add_argument("--limit", type=int, default=20)
    cancel_all = actions.add_parser("cancel-all", help="cancel all of the account's orders")
    cancel_all.add_argument("market")
    cancel_all.add_argument("--side", choices=["buy", "sell"])
    for action in actions.choices.values():
        action.add_argument("--account", help="the account (default: the credentials' "
                                              "user)")
        action.add_argument("--ack", action="store_true",
                            help="reply once sequenced instead of once applied")


def _operations_commands(commands: Any) -> None:
    """``selftest``, ``failover`` and ``chaos``: checking and exercising a running exchange."""
    check = commands.add_parser(
        "selftest", help="one trade end to end: a resting sell and a crossing buy "
                         "(what `helm test` runs)")
    check.add_argument("--market", required=True)
    check.add_argument("--price", default="100", help="the price of both orders "
                                                     "(default: %(default)s)")
    check.add_argument("--timeout", type=float, default=300,
                       help="seconds to wait for the market to be served (default: "
                            "%(default)s)")
    check.add_argument("--ledger-shards", type=int, default=_ledger_shards(),
                       help="with balances: the ledger's shards, to fund the two test "
                            "accounts through first (default: $TRADEPLANE_LEDGER_SHARDS; "
                            "0: no balances)")

    failover = commands.add_parser("failover", help="planned switchover of a market's leader")
    failover.add_argument("market")
    failover.add_argument("--to", help="the standby to lead (default: the least behind)")

    chaos = commands.add_parser("chaos", help="break things on purpose, to watch them heal")
    chaos_actions = chaos.add_subparsers(dest="action", required=True, metavar="ACTION")
    kill_leader = chaos_actions.add_parser("kill-leader", help="kill -9 a market's leader")
    kill_leader.add_argument("market")

    audit = commands.add_parser(
        "audit", help="check the ledger: each shard's invariants, clearing across shards, "
                      "and with a database the journal against the live balances "
                      "(exit 1 on a breach)")
    audit.add_argument("--ledger-shards", type=int, default=_ledger_shards(),
                       help="the exchange's ledger shards (default: "
                            "$TRADEPLANE_LEDGER_SHARDS)")
    audit.add_argument("--postgres-dsn", default=os.environ.get("TRADEPLANE_POSTGRES_DSN"),
                       help="also check the recorded journal and balances (default: "
                            "$TRADEPLANE_POSTGRES_DSN, else none)")
    audit.add_argument("--timeout", type=float, default=30,
                       help="seconds to wait for the shards to settle alike and the "
                            "recorder to catch up (default: %(default)s)")


def _demo_command(commands: Any) -> None:
    """``demo``: the engine core alone, no NATS."""
    demo = commands.add_parser(
        "demo", help="run the matching engine core on the standard workload, no NATS",
    )
    demo.add_argument("--commands", type=int, default=200_000,
                      help="how many commands to generate (default: 200,000)")
    demo.add_argument("--seed", type=int, default=42, help="workload seed (default: 42)")
    demo.add_argument("--depth", type=int, default=5, help="book levels to show (default: 5)")


def _security_commands(commands: Any) -> None:
    """``auth``, ``accounts`` and ``security``: who may connect (docs/security.md)."""
    auth = commands.add_parser(
        "auth", help="run the auth service: NATS's auth callout for traders "
                     "($TRADEPLANE_POSTGRES_DSN)")
    auth.add_argument("--issuer-seed", default=os.environ.get("TRADEPLANE_AUTH_ISSUER_SEED"),
                      help="the signing key NATS trusts (default: "
                           "$TRADEPLANE_AUTH_ISSUER_SEED)")
    auth.add_argument("--system-credentials",
                      default=os.environ.get("TRADEPLANE_AUTH_SYSTEM_CREDENTIALS"),
                      help="the system account user's credentials, to close revoked "
                           "connections (default: $TRADEPLANE_AUTH_SYSTEM_CREDENTIALS)")
    auth.add_argument("--metrics-port", type=int, default=0,
                      help="serve /livez, /readyz (ready once both NATS connections are "
                           "up and callouts answered) and Prometheus metrics on this port "
                           "(0: none)")

    accounts = commands.add_parser(
        "accounts", help="create, list and revoke trader accounts ($TRADEPLANE_POSTGRES_DSN)")
    accounts.add_argument("--postgres-dsn", default=os.environ.get("TRADEPLANE_POSTGRES_DSN"),
                          help="the exchange's database (default: $TRADEPLANE_POSTGRES_DSN)")
    verbs = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = verbs.add_parser("create", help="a new account; its secret is shown once")
    create.add_argument("account")
    create.add_argument("--output", type=Path,
                        help="also write a credentials file for the trader (mode 0600)")
    verbs.add_parser("list", help="every account, and when it was revoked")
    revoke = verbs.add_parser("revoke", help="no new connections; live ones closed in seconds")
    revoke.add_argument("account")

    security = commands.add_parser("security", help="the exchange's NATS secrets")
    security_verbs = security.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = security_verbs.add_parser(
        "init", help="create the service credentials, the auth service's signing key and "
                     "the nats-server configuration in a directory (kept when present)")
    init.add_argument("directory", type=Path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(logging.WARNING)

    if args.command == "demo":
        from tradeplane.demo import run_demo

        if args.commands <= 0:
            parser.error("--commands must be positive")
        run_demo(args.commands, args.seed, args.depth, sys.stdout)
        return 0
    if args.command == "up":
        from tradeplane.up import DEFAULT_MANIFESTS, run_up

        return run_up(args.manifests or [DEFAULT_MANIFESTS], args.data_dir, args.port,
                      args.engines, args.demo, sys.stdout, args.postgres_dsn, args.replicas,
                      args.ledger_shards)
    try:
        return _event_loop_runner()(_run_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    except (OSError, nats.errors.NoServersError) as exc:
        print(f"tradeplane: cannot reach NATS at {args.nats}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 3


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop where it is installed (about twice the message rate), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run
    return uvloop.run


def _service_gc() -> None:
    """Fewer, later garbage collections for a long-running service.

    What is loaded at start-up is frozen out of every collection, and the young
    generation collects every 50,000 allocations instead of 700: on the end-to-end
    benchmark this lowered p99 latency at low rates (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _quiet_timers(record: logging.LogRecord) -> bool:
    """kopf logs every successful timer run; the status timer runs every 2 s per market."""
    message = record.getMessage()
    return not (message.startswith("Timer ") and message.endswith(" succeeded."))


def _on_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT stop a service: they set ``stop`` (the service leaves in order,
    the engine handing over its lead first); a second signal cancels it at once.

    Handled explicitly because a container's first process is PID 1, for which the
    kernel ignores every signal that has no handler: without this, SIGTERM would do
    nothing, and Kubernetes would SIGKILL the pod at the end of its grace period.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal() -> None:
        if stop.is_set():
            task.cancel()
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run a service until it ends or ``stop`` is set; then cancel it (its ``finally``
    blocks drain its connections)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_async(args: argparse.Namespace) -> int:
    if args.command in ("accounts", "security"):
        from tradeplane.admin import accounts_command, security_command

        if args.command == "accounts":
            return await accounts_command(args, sys.stdout)
        return security_command(args, sys.stdout)
    try:
        args.access = Access.from_environment(os.environ, args.credentials)
    except AccessError as exc:
        print(f"tradeplane: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    if args.command in ("engine", "gateway", "recorder", "auth", "ledger"):
        _service_gc()
        _on_stop_signals(stop)
    if args.command in ("engine", "gateway", "recorder", "operator", "selftest"):
        from tradeplane_shared import telemetry

        telemetry.configure(f"tradeplane-{args.command}")
    service = _SERVICES.get(args.command)
    if service is not None:
        return await service(args, stop)
    if args.command in ("asset", "deposit", "withdraw", "balance"):
        from tradeplane.funds import funds_command

        return await funds_command(args, sys.stdout)
    if args.command == "selftest":
        from tradeplane.selftest import selftest

        return await selftest(args.nats, args.market, args.price, args.timeout, sys.stdout,
                              args.access, args.ledger_shards)
    if args.command == "audit":
        from tradeplane.audit import audit

        return await audit(args.nats, args.access, args.ledger_shards, args.postgres_dsn,
                           sys.stdout, timeout=args.timeout)
    from tradeplane import trading

    command = {"order": trading.order_command, "book": trading.book_command,
               "trades": trading.trades_command, "failover": trading.failover_command,
               "chaos": trading.kill_leader_command}.get(args.command,
                                                         trading.status_command)
    return await command(args, sys.stdout)


def _serve_metrics(port: int) -> None:
    """Prometheus metrics on ``port``; none when it is 0."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port)


@contextlib.asynccontextmanager
async def _serving_health(port: int) -> AsyncIterator[ServiceHealth | None]:
    """``/livez``, ``/readyz`` and ``/metrics`` on ``port`` for as long as the service
    runs (none when it is 0); the service tells the ``ServiceHealth`` when it is ready."""
    if not port:
        yield None
        return
    from tradeplane_shared.health import DEFAULT_HOST, ServiceHealth, start_service_health

    health = ServiceHealth()
    server = await start_service_health(DEFAULT_HOST, port, health)
    try:
        yield health
    finally:
        server.close()
        await server.wait_closed()


async def _engine(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_engine.service import run_engines
    from tradeplane_engine.streams import StreamSettings

    settings = StreamSettings(replicas=args.stream_replicas,
                              command_retention=args.command_retention,
                              events_max_age_seconds=args.events_max_age)
    await run_engines(args.nats, args.markets, settings,
                      os.environ.get("TRADEPLANE_POSTGRES_DSN"), args.replica,
                      health_port=args.health_port, stop=stop, access=args.access)
    return 0


async def _ledger(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_engine.service.ledgers import run_ledgers
    from tradeplane_engine.streams import StreamSettings

    shards = args.shards_run or list(range(args.shards))
    try:
        await _until(stop, run_ledgers(args.nats, shards, args.shards,
                                       StreamSettings(replicas=args.stream_replicas),
                                       args.replica, health_port=args.health_port,
                                       access=args.access,
                                       dsn=os.environ.get("TRADEPLANE_POSTGRES_DSN")))
    except ValueError as exc:
        print(f"tradeplane ledger: {exc}", file=sys.stderr)
        return 2
    return 0


async def _recorder(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_engine.store.recorders import run_recorders

    dsn = os.environ.get("TRADEPLANE_POSTGRES_DSN")
    if not dsn:
        print("tradeplane recorder: set TRADEPLANE_POSTGRES_DSN", file=sys.stderr)
        return 2
    async with _serving_health(args.metrics_port) as health:
        await _until(stop, run_recorders(args.nats, args.markets, dsn, access=args.access,
                                         health=health, ledger_shards=args.ledger_shards))
    return 0


async def _operator(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_operator.config import Config
    from tradeplane_operator.handlers import run as run_operator
    from tradeplane_operator.leadership import LeadershipLostError

    try:
        config = Config.from_environment({**os.environ, "TRADEPLANE_NATS": args.nats,
                                          **({"TRADEPLANE_CREDENTIALS": args.credentials}
                                             if args.credentials else {})})
    except ValueError as exc:  # a setting it cannot take: say which, and stop
        print(f"tradeplane operator: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("kopf.objects").addFilter(_quiet_timers)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    _serve_metrics(args.metrics_port)
    try:
        await run_operator(config, liveness=liveness)  # kopf handles its own signals
    except LeadershipLostError as exc:  # exit: the pod starts again, as a standby
        print(f"tradeplane operator: {exc}", file=sys.stderr)
        return 1
    return 0


async def _gateway(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_gateway.serve import run_gateway

    async with _serving_health(args.metrics_port) as health:
        await _until(stop, run_gateway(args.nats, access=args.access, health=health,
                                       ledger_shards=args.ledger_shards))
    return 0


async def _auth(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from tradeplane_gateway.auth import run_auth

    dsn = os.environ.get("TRADEPLANE_POSTGRES_DSN")
    if not (dsn and args.issuer_seed and args.system_credentials):
        print("tradeplane auth: needs $TRADEPLANE_POSTGRES_DSN, --issuer-seed and "
              "--system-credentials", file=sys.stderr)
        return 2
    try:
        system = Access(Access.from_environment({}, args.system_credentials).credentials,
                        args.access.ca_file, args.access.cert_file, args.access.key_file)
    except AccessError as exc:
        print(f"tradeplane auth: {exc}", file=sys.stderr)
        return 2
    from tradeplane_engine.store.database import open_database

    async with _serving_health(args.metrics_port) as health:
        pool = await open_database(dsn)
        try:
            await _until(stop, run_auth(args.nats, pool, args.issuer_seed, args.access,
                                        system, health=health))
        finally:
            await pool.close()
    return 0


_SERVICES: dict[str, Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]]] = {
    "engine": _engine, "recorder": _recorder, "operator": _operator, "gateway": _gateway,
    "auth": _auth, "ledger": _ledger,
}
"""The long-running commands, each its own function; SIGTERM sets ``stop``."""


if __name__ == "__main__":
    sys.exit(main())
