"""The administrator's side of the command line: trader accounts and the exchange's
NATS secrets (docs/security.md)."""

from __future__ import annotations

import argparse
from typing import IO

import asyncpg

from tradeplane import security
from tradeplane_engine.access import Credentials
from tradeplane_engine.store.database import open_database, redact
from tradeplane_gateway import accounts
from tradeplane_gateway.accounts import AccountError


async def accounts_command(args: argparse.Namespace, out: IO[str]) -> int:
    if not args.postgres_dsn:
        out.write("tradeplane accounts: set --postgres-dsn or $TRADEPLANE_POSTGRES_DSN\n")
        return 2
    try:
        pool = await open_database(args.postgres_dsn, size=1)
    except (OSError, asyncpg.PostgresError) as exc:
        out.write(f"tradeplane accounts: database {redact(args.postgres_dsn)}: {exc}\n")
        return 3
    try:
        async with pool.acquire() as connection:
            return await _accounts(connection, args, out)
    except AccountError as exc:
        out.write(f"refused: {exc.code}: {exc.reason}\n")
        return 2
    finally:
        await pool.close()


async def _accounts(connection: asyncpg.Connection, args: argparse.Namespace,
                    out: IO[str]) -> int:
    if args.action == "create":
        secret = await accounts.create(connection, args.account)
        out.write(f"account {args.account} created; its secret (shown once, not stored):\n"
                  f"{secret}\n")
        if args.output is not None:
            Credentials(args.account, secret).save(args.output)
            out.write(f"credentials written to {args.output} (mode 0600): connect with "
                      f"tradeplane --credentials {args.output} ...\n")
        return 0
    if args.action == "revoke":
        await accounts.revoke(connection, args.account)
        out.write(f"account {args.account} revoked: no new connections; live ones are "
                  "closed within seconds\n")
        return 0
    for account in await accounts.listing(connection):
        state = (f"revoked {account.revoked_at:%Y-%m-%d %H:%M:%S}" if account.revoked_at
                 else "active")
        out.write(f"{account.account:<64}  created {account.created_at:%Y-%m-%d %H:%M:%S}"
                  f"  {state}\n")
    return 0


def security_command(args: argparse.Namespace, out: IO[str]) -> int:
    files = security.init(args.directory)
    out.write(f"NATS secrets in {files.directory}:\n"
              f"  {files.nats_config}: include it in nats-server's configuration\n"
              f"  {files.issuer_seed}: the auth service's signing key (--issuer-seed)\n"
              f"  {files.credentials('gateway').parent}/<service>.json: each service's "
              "credentials (--credentials)\n")
    return 0
