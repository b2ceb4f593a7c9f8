"""The trader's side of the command line: orders, the live book, trades, status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient

from tradeplane_engine.access import SERVICE_USERS, Access, trader_inbox
from tradeplane_engine.service.shutdown import standbys
from tradeplane_engine.wire import MARKETS_BUCKET, REPLICAS_BUCKET, definition_entry, engine_subject
from tradeplane_gateway import Client, LocalBook, Reply, RequestError, connect
from tradeplane_gateway.errors import ConnectionLostError
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

_pretty = msgspec.json.Encoder()


async def _quiet(_: Exception) -> None:
    """Connection errors become one clear message in ``main``, not a traceback per retry."""


CONNECT_OPTIONS: dict[str, Any] = {"max_reconnect_attempts": 2, "connect_timeout": 2,
                                   "reconnect_time_wait": 0.5, "error_cb": _quiet}


def _options(access: Access, inbox_prefix: str | None = None) -> dict[str, Any]:
    """How a command connects: with its credentials, failing fast."""
    return {**CONNECT_OPTIONS, **access.options(inbox_prefix)}


def _print_reply(reply: Reply, out: IO[str]) -> None:
    out.write(msgspec.json.format(_pretty.encode(reply), indent=2).decode() + "\n")


async def order_command(args: argparse.Namespace, out: IO[str]) -> int:
    async def order(client: Client) -> None:
        _print_reply(await _order(client, args), out)

    return await as_trader(args, out, order)


async def as_trader(args: argparse.Namespace, out: IO[str],
                    work: Callable[[Client], Awaitable[None]]) -> int:
    """``work`` as the account of ``--account`` or of the credentials; the exit code:
    0, 2 when refused, 3 when nothing answered."""
    account = args.account or (args.access.credentials and args.access.credentials.user)
    if not account:
        out.write("refused: give --account or a trader's --credentials\n")
        return 2
    async with connect(args.nats, account=account,
                       **_options(args.access, trader_inbox(account))) as client:
        try:
            await work(client)
        except RequestError as exc:
            out.write(f"refused: {exc.code} {exc.name}: {exc.reason}\n")
            return 2
        except ConnectionLostError as exc:
            out.write(f"no answer: {exc}\n")
            return 3
        return 0


async def _order(client: Client, args: argparse.Namespace) -> Reply:
    response = "ack" if args.ack else "result"
    if args.action == "place":
        return await client.place(
            args.market, args.side, args.quantity, args.price, type=args.type,
            time_in_force=args.time_in_force, post_only=args.post_only or None,
            client_order_id=args.client_order_id, quote_amount=args.quote_amount,
            response=response)
    if args.action == "cancel":
        return await client.cancel(args.market, args.order_id,
                                   client_order_id=args.client_order_id, response=response)
    if args.action == "replace":
        return await client.replace(args.market, args.order_id,
                                    client_order_id=args.client_order_id, price=args.price,
                                    quantity=args.quantity, response=response)
    if args.action == "cancel-all":
        return await client.cancel_all(args.market, args.side, response=response)
    if args.action == "open":
        return await client.open_orders(args.market)
    if args.action == "trades":
        return await client.trade_history(args.market, before=args.before, limit=args.limit)
    return await client.status(args.market, args.order_id, client_order_id=args.client_order_id)


def render_book(book: LocalBook, depth: int) -> str:
    asks = list(reversed(book.asks[:depth]))
    bids = book.bids[:depth]
    width = max([len(price) for price, _ in asks + bids] + [8])
    lines = [f"{book.market}  at {book.sequence}  mode {book.mode}",
             f"{'price':>{width}}  quantity"]
    lines += [f"{price:>{width}}  {quantity:<14} ask" for price, quantity in asks]
    lines.append("-" * (width + 20))
    lines += [f"{price:>{width}}  {quantity:<14} bid" for price, quantity in bids]
    return "\n".join(lines) + "\n"


async def book_command(args: argparse.Namespace, out: IO[str]) -> int:
    # Engines answer a snapshot on a trader-style inbox only: a service's own (the
    # admin's) would not do.
    credentials = args.access.credentials
    trader = credentials is not None and credentials.user not in SERVICE_USERS
    nc = await nats.connect(args.nats, **_options(args.access,
                                                   None if trader else trader_inbox("viewer")))
    try:
        async with LocalBook(nc, args.market) as book:
            if args.once:
                out.write(render_book(book, args.depth))
                return 0
            seen = -1
            while True:
                if book.sequence != seen:
                    seen = book.sequence
                    out.write("\x1b[H\x1b[2J" + render_book(book, args.depth))
                    out.flush()
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def trades_command(args: argparse.Namespace, out: IO[str]) -> int:
    async with connect(args.nats, account="viewer", **_options(args.access)) as client:
        shown = 0
        async for message in client.trades(args.market):
            for trade in message["trades"]:
                out.write(f"{trade['tradeId']:>8}  {trade['side']:<4}  {trade['quantity']:>12} "
                          f"@ {trade['price']}\n")
                shown += 1
            out.flush()
            if args.count and shown >= args.count:
                return 0
    return 0


class ReplicaStatus(msgspec.Struct, rename="camel"):
    """What ``status`` shows of a replica's report (the engine's ``MarketService.status``)."""

    market: str
    replica: str
    role: str
    mode: str = ""
    sequence: int = 0
    next_trade_id: int = 1
    epoch: int = 0
    lag: int | None = None


async def bucket_keys(nc: NatsClient, bucket: str) -> list[str]:
    """The keys a KV bucket holds a message for (deleted ones included: reading one says
    it is gone), sorted, as its stream's subjects say. Not ``KeyValue.keys()``: its
    watcher may end before the first entry arrives, and then says there are none."""
    prefix = f"$KV.{bucket}."
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    return sorted(subject[len(prefix):] for subject in info.state.subjects or {})


async def replica_statuses(nc: NatsClient) -> dict[str, list[dict[str, Any]]]:
    """What every live replica last published, by market. A value that is not a report
    (anyone with access to the bucket may have written it) is skipped and counted."""
    try:
        kv = await nc.jetstream().key_value(REPLICAS_BUCKET)
        keys = await bucket_keys(nc, REPLICAS_BUCKET)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        return {}
    replicas: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(key)
            if not entry.value:
                continue
            try:
                status = msgspec.json.decode(entry.value, type=ReplicaStatus)
            except msgspec.DecodeError:
                UNTRUSTED_SKIPPED.labels("cli", "replica report").inc()
                continue
            shown = {field: value for field, value in msgspec.to_builtins(status).items()
                     if value is not None}
            replicas.setdefault(status.market, []).append(shown)
    return replicas


async def status_command(args: argparse.Namespace, out: IO[str]) -> int:
    nc = await nats.connect(args.nats, **_options(args.access))
    try:
        kv = await nc.jetstream().key_value(MARKETS_BUCKET)
        names = await bucket_keys(nc, MARKETS_BUCKET)
        replicas = await replica_statuses(nc)
        out.write(f"{'market':<12} {'symbol':<10} {'mode':<10} {'sequence':>9} {'trades':>7} "
                  f"{'epoch':>5}  replicas (role, lag in commands)\n")
        for name in names:
            try:
                entry = await kv.get(name)
                symbol = definition_entry(name, entry.value or b"").spec().symbol
            except nats.js.errors.KeyNotFoundError:
                continue  # deleted since it was listed
            except ValueError as exc:  # msgspec's DecodeError included
                out.write(f"{name[:80]:<12} definition refused: {str(exc)[:120]}\n")
                UNTRUSTED_SKIPPED.labels("cli", "market definition").inc()
                continue
            members = sorted(replicas.get(name, []), key=lambda status: status["replica"])
            leader = next((m for m in members if m["role"] == "leader"), None)
            shown = ", ".join(f"{m['replica']} ({m['role']}, {m.get('lag', '?')})"
                              for m in members) or "no engine"
            out.write(f"{name:<12} {symbol:<10} {(leader or {}).get('mode', ''):<10} "
                      f"{(leader or {}).get('sequence', ''):>9} "
                      f"{max(0, (leader or {}).get('nextTradeId', 1) - 1):>7} "
                      f"{(leader or {}).get('epoch', ''):>5}  {shown}\n")
        if not names:
            out.write("no markets defined\n")
        return 0
    finally:
        await nc.close()


async def _leader(nc: NatsClient, market: str, not_: str | None = None,
                  timeout: float = 30.0) -> dict[str, Any]:
    """The leader's status, waiting for one (other than ``not_``)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
            status: dict[str, Any] = msgspec.json.decode((await nc.request(
                engine_subject(market, "status"), b"", timeout=1.0)).data)
            if status["replica"] != not_:
                return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader for {market} within {timeout} s")
        await asyncio.sleep(0.01)


async def failover_command(args: argparse.Namespace, out: IO[str]) -> int:
    """A planned switchover to a standby, timed from request to the new leader."""
    nc = await nats.connect(args.nats, **_options(args.access))
    try:
        leader = await _leader(nc, args.market, timeout=5)
        target = args.to
        if target is None:
            js = nc.jetstream()
            ready = await standbys(js, await js.key_value(REPLICAS_BUCKET), args.market,
                                   leader["replica"], "cli")
            if not ready:
                out.write(f"{args.market}: no caught-up standby to hand over to\n")
                return 2
            target = ready[0]
        started = time.monotonic()
        answer = msgspec.json.decode((await nc.request(
            engine_subject(args.market, "switchover"), msgspec.json.encode({"to": target}),
            timeout=10)).data)
        if "error" in answer:
            out.write(f"{args.market}: {answer['error']}\n")
            return 2
        new = await _leader(nc, args.market, not_=leader["replica"])
        out.write(f"{args.market}: {leader['replica']} handed over to {new['replica']} "
                  f"(epoch {new['epoch']}) in {(time.monotonic() - started) * 1e3:.0f} ms\n")
        return 0
    finally:
        await nc.close()


async def kill_leader_command(args: argparse.Namespace, out: IO[str]) -> int:
    """``kill -9`` of a market's leader (on this machine), timed to the next leader."""
    nc = await nats.connect(args.nats, **_options(args.access))
    try:
        leader = await _leader(nc, args.market, timeout=5)
        if leader.get("host") not in (None, socket.gethostname()):
            out.write(f"the leader runs on {leader['host']}, not here\n")
            return 2
        started = time.monotonic()
        os.kill(leader["pid"], signal.SIGKILL)
        out.write(f"{args.market}: killed leader {leader['replica']} (pid {leader['pid']}, "
                  f"epoch {leader['epoch']})\n")
        new = await _leader(nc, args.market, not_=leader["replica"])
        out.write(f"{args.market}: {new['replica']} leads (epoch {new['epoch']}) after "
                  f"{(time.monotonic() - started) * 1e3:.0f} ms, from sequence "
                  f"{new['publishedThrough']}\n")
        return 0
    finally:
        await nc.close()
