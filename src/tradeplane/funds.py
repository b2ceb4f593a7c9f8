"""Balances from the command line (docs/ledger.md): an administrator defines assets and
moves funds in and out; a trader reads its balances.

    tradeplane asset define BTC 8                  an asset and its decimals
    tradeplane deposit alice USDT 1000 --transfer-id bank-123
    tradeplane withdraw alice USDT 10 --transfer-id bank-124
    tradeplane balance [--account alice]

Amounts are decimal strings in the asset's units; the shard's leader says how many
decimals an asset has. A transfer id makes a retry harmless: the same transfer again
changes nothing.
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tradeplane.ledger_tools import LedgerToolError, Outcome, submit
from tradeplane.trading import _options, as_trader
from tradeplane_engine.core.market import parse_decimal
from tradeplane_engine.ledger import DefineAsset, Deposit, Refused, Withdraw, shard_of
from tradeplane_engine.wire import ledger_subject
from tradeplane_gateway import Client

DEFAULT_SHARDS = int(os.environ.get("TRADEPLANE_LEDGER_SHARDS") or 1)


def add_commands(commands: Any) -> None:
    """``asset``, ``deposit``, ``withdraw`` and ``balance``."""
    asset = commands.add_parser("asset", help="define an asset to the ledger (administrator)")
    verbs = asset.add_subparsers(dest="action", required=True, metavar="ACTION")
    define = verbs.add_parser("define", help="an asset and its decimals (never change)")
    define.add_argument("asset")
    define.add_argument("decimals", type=int)
    for name, text in (("deposit", "credit an account (administrator)"),
                       ("withdraw", "debit an account's available balance (administrator)")):
        transfer = commands.add_parser(name, help=text)
        transfer.add_argument("account")
        transfer.add_argument("asset")
        transfer.add_argument("amount", help="a decimal amount of the asset")
        transfer.add_argument("--transfer-id", required=True,
                              help="the transfer's own id: a retry with it is applied once")
    for parser in (define, *(commands.choices[name] for name in ("deposit", "withdraw"))):
        parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                            help="the ledger's shards (default: $TRADEPLANE_LEDGER_SHARDS "
                                 "or 1)")
    balance = commands.add_parser("balance", help="an account's balances")
    balance.add_argument("--account", help="the account (default: the credentials' user)")


async def funds_command(args: argparse.Namespace, out: IO[str]) -> int:
    if args.command == "balance":
        return await _balance(args, out)
    nc = await nats.connect(args.nats, **_options(args.access))
    try:
        if args.command == "asset":
            outcomes = [await submit(nc, shard, DefineAsset(0, 0, asset=args.asset,
                                                            decimals=args.decimals))
                        for shard in range(args.shards)]
        else:
            shard = shard_of(args.account, args.shards)
            decimals = (await _status(nc, shard)).get("assets", {}).get(args.asset)
            if decimals is None:
                out.write(f"refused: asset {args.asset} is not defined (tradeplane asset "
                          "define)\n")
                return 2
            kind = Deposit if args.command == "deposit" else Withdraw
            outcomes = [await submit(nc, shard, kind(
                0, 0, transfer_id=args.transfer_id, account=args.account, asset=args.asset,
                amount=_units(args.amount, decimals)))]
    except (ValueError, LedgerToolError) as exc:
        out.write(f"refused: {exc}\n")
        return 2
    except (NoRespondersError, NatsTimeout) as exc:
        out.write(f"no answer: no ledger shard is leading ({type(exc).__name__})\n")
        return 3
    finally:
        await nc.close()
    return _report(outcomes, out)


def _units(amount: str, decimals: int) -> int:
    """A decimal amount in the asset's smallest units; refused if finer than them."""
    try:
        units = parse_decimal(amount, "amount").scaleb(decimals)
    except InvalidOperation as exc:
        raise ValueError(f"amount {amount} is out of range") from exc
    if units != units.to_integral_value() or units <= 0:
        raise ValueError(f"amount {amount} is not a positive multiple of "
                         f"{Decimal(1).scaleb(-decimals)}")
    return int(units)


async def _status(nc: NatsClient, shard: int) -> dict[str, Any]:
    reply = await nc.request(ledger_subject(shard, "status"), b"", timeout=5)
    status: dict[str, Any] = msgspec.json.decode(reply.data)
    return status


def _report(outcomes: list[Outcome], out: IO[str]) -> int:
    code = 0
    for outcome, again in outcomes:
        if again:
            out.write(f"shard {outcome.shard}: sequenced before as {outcome.sequence} (a "
                      "retry: Duplicate, nothing changed now)\n")
            continue
        for event in outcome.events:
            if isinstance(event, Refused):
                out.write(f"refused by shard {outcome.shard}: {int(event.code)} "
                          f"{event.code.name}: {event.reason}\n")
                code = 2
        if code == 0:
            what = ", ".join(type(event).__name__ for event in outcome.events)
            out.write(f"shard {outcome.shard}: applied as sequence {outcome.sequence} "
                      f"({what or 'no change'})\n")
    return code


async def _balance(args: argparse.Namespace, out: IO[str]) -> int:
    async def show(client: Client) -> None:
        balances = await client.balances()
        out.write(f"{'asset':<10} {'available':>24} {'held':>24}\n")
        for asset, balance in sorted(balances.items()):
            out.write(f"{asset:<10} {balance.available:>24} {balance.held:>24}\n")

    return await as_trader(args, out, show)
