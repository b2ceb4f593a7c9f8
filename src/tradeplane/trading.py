"""The trader's side of the command line: orders, the live book, trades, status."""

from __future__ import annotations

import argparse
import asyncio
from typing import IO, Any

import msgspec
import nats

from tradeplane_engine.wire import MARKETS_BUCKET, decode_definition, engine_subject
from tradeplane_gateway import Client, LocalBook, Reply, RequestError, connect
from tradeplane_gateway.errors import ConnectionLostError

_pretty = msgspec.json.Encoder()


async def _quiet(_: Exception) -> None:
    """Connection errors become one clear message in ``main``, not a traceback per retry."""


CONNECT_OPTIONS: dict[str, Any] = {"max_reconnect_attempts": 2, "connect_timeout": 2,
                                   "reconnect_time_wait": 0.5, "error_cb": _quiet}


def _print_reply(reply: Reply, out: IO[str]) -> None:
    out.write(msgspec.json.format(_pretty.encode(reply), indent=2).decode() + "\n")


async def order_command(args: argparse.Namespace, out: IO[str]) -> int:
    async with connect(args.nats, account=args.account, **CONNECT_OPTIONS) as client:
        try:
            reply = await _order(client, args)
        except RequestError as exc:
            out.write(f"refused: {exc.code} {exc.name}: {exc.reason}\n")
            return 2
        except ConnectionLostError as exc:
            out.write(f"no answer: {exc}\n")
            return 3
        _print_reply(reply, out)
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
    nc = await nats.connect(args.nats, **CONNECT_OPTIONS)
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
    async with connect(args.nats, account="viewer", **CONNECT_OPTIONS) as client:
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


async def status_command(args: argparse.Namespace, out: IO[str]) -> int:
    nc = await nats.connect(args.nats, **CONNECT_OPTIONS)
    try:
        kv = await nc.jetstream().key_value(MARKETS_BUCKET)
        try:
            names = sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            names = []
        rows: list[dict[str, Any]] = []
        for name in names:
            entry = await kv.get(name)
            assert entry.value is not None
            definition = decode_definition(entry.value)
            row: dict[str, Any] = {"market": name, "symbol": definition.spec().symbol}
            try:
                status = msgspec.json.decode((await nc.request(
                    engine_subject(name, "status"), b"", timeout=1.0)).data)
                row.update(status)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                row["role"] = "no engine"
            rows.append(row)
        out.write(f"{'market':<12} {'symbol':<10} {'engine':<10} {'mode':<10} "
                  f"{'sequence':>9} {'trades':>8}\n")
        for row in rows:
            out.write(f"{row['market']:<12} {row['symbol']:<10} {row.get('role', ''):<10} "
                      f"{row.get('mode', ''):<10} {row.get('sequence', ''):>9} "
                      f"{max(0, row.get('nextTradeId', 1) - 1):>8}\n")
        if not rows:
            out.write("no markets defined\n")
        return 0
    finally:
        await nc.close()
