"""Trader accounts and their secrets, in PostgreSQL (the ``accounts`` table).

An administrator creates an account (``tradeplane accounts create alice``) and is shown
its secret once; only the secret's SHA-256 is stored. Secrets are 32 random bytes, so a
fast hash is enough: there is nothing to guess, only a stolen table to make useless. A
revoked account keeps its row (who had access, and when it ended) and can no longer
connect; the auth service closes its live connections within seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tradeplane_engine.wire import is_account
from tradeplane_gateway.errors import TradeplaneError

SECRET_PREFIX = "tps_"


class AccountError(TradeplaneError):
    """An account operation that cannot be done, with a stable code and the reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Account:
    account: str
    created_at: datetime
    revoked_at: datetime | None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create(connection: asyncpg.Connection, account: str) -> str:
    """Create ``account`` and return its secret (shown once, stored hashed)."""
    if not is_account(account):
        raise AccountError("BAD_ACCOUNT", f"account {account[:80]!r} must be 1-64 characters "
                                          "of A-Z a-z 0-9 _ -")
    secret = new_secret()
    created = await connection.fetchval(
        "INSERT INTO accounts (account, secret_sha256) VALUES ($1, $2) "
        "ON CONFLICT (account) DO NOTHING RETURNING account", account, digest(secret))
    if created is None:
        raise AccountError("ACCOUNT_EXISTS", f"account {account} already exists "
                                             "(a revoked account is not reissued)")
    return secret


async def issue(connection: asyncpg.Connection, account: str) -> str:
    """A new secret for ``account``, created or not, revoked or not (for the demo
    traders of ``tradeplane up``, whose secrets live in its data directory)."""
    secret = new_secret()
    await connection.execute(
        "INSERT INTO accounts (account, secret_sha256) VALUES ($1, $2) ON CONFLICT (account) "
        "DO UPDATE SET secret_sha256 = excluded.secret_sha256, revoked_at = NULL",
        account, digest(secret))
    return secret


async def revoke(connection: asyncpg.Connection, account: str) -> None:
    revoked = await connection.fetchval(
        "UPDATE accounts SET revoked_at = coalesce(revoked_at, now()) WHERE account = $1 "
        "RETURNING account", account)
    if revoked is None:
        raise AccountError("NO_SUCH_ACCOUNT", f"no account {account[:80]!r}")


async def listing(connection: asyncpg.Connection) -> list[Account]:
    rows = await connection.fetch(
        "SELECT account, created_at, revoked_at FROM accounts ORDER BY account")
    return [Account(row["account"], row["created_at"], row["revoked_at"]) for row in rows]


async def verify(connection: asyncpg.Connection, account: str, secret: str) -> bool:
    """Whether ``secret`` is the live secret of ``account``."""
    if not is_account(account):
        return False
    stored = await connection.fetchval(
        "SELECT secret_sha256 FROM accounts WHERE account = $1 AND revoked_at IS NULL",
        account)
    return stored is not None and hmac.compare_digest(stored, digest(secret))


async def recently_revoked(connection: asyncpg.Connection, seconds: float) -> list[str]:
    """Accounts revoked in the last ``seconds`` (by the database's clock)."""
    rows = await connection.fetch(
        "SELECT account FROM accounts WHERE revoked_at > now() - make_interval(secs => $1)",
        seconds)
    return [row["account"] for row in rows]


async def all_revoked(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch("SELECT account FROM accounts WHERE revoked_at IS NOT NULL")
    return [row["account"] for row in rows]
