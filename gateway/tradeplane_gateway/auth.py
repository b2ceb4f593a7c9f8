"""The auth service: NATS asks it whether a trader may connect, and with what rights.

nats-server (2.10+) is configured with an ``auth_callout`` (docs/security.md): every
connection that is not a service user is sent here as an authorization request on
``$SYS.REQ.USER.AUTH``. The connection's user is the account, its password the secret
an administrator issued (``tradeplane accounts create``). A live, matching secret gets a
user token, signed with the issuer key NATS trusts, carrying the trader's permissions
(``tradeplane_engine.access.trader_permissions``); anything else gets an error and NATS
refuses the connection.

Revocation: every ``SWEEP_EVERY`` seconds the service reads which accounts were revoked
lately and closes their live connections on every server (``CONNZ`` then ``KICK`` in the
system account); a closed client that reconnects comes back here and is refused.

Tokens are NATS JWTs: ``base64url(header).base64url(claims).base64url(ed25519 sig)``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import asyncpg
import nkeys
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter

from tradeplane_engine.access import TRADERS_ACCOUNT, Access, AccessError, trader_permissions
from tradeplane_engine.connection import NATS_ERRORS, connect
from tradeplane_engine.store.database import DATABASE_UNAVAILABLE
from tradeplane_gateway import accounts
from tradeplane_gateway.errors import TradeplaneError
from tradeplane_shared.health import ServiceHealth
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
AUTH_QUEUE = "tp-auth"
"""Replicas of the auth service share the requests: each is answered by one of them."""
TOKEN_LIFETIME = 24 * 3600
"""Seconds a trader's user token is valid; the connection must then authenticate again."""
SWEEP_EVERY = 2.0
"""Seconds between two looks for revoked accounts' live connections."""
SWEEP_WINDOW = 30.0
"""An account revoked this recently is swept on every look (a connection that was being
authorized while it was revoked is closed by a later sweep)."""
DATABASE_TIMEOUT = 2.0
"""Seconds an authorization waits for PostgreSQL before refusing (NATS waits ~2 s)."""
CONNZ_WAIT = 0.5
"""Seconds the answers of every server to a connection listing are gathered for."""
MAX_REQUEST = 64 * 1024

AUTHORIZATIONS = Counter("tradeplane_auth_requests_total",
                         "Trader connection attempts the auth service answered",
                         ["result"])
KICKED = Counter("tradeplane_auth_revoked_connections_total",
                 "Live connections of revoked accounts closed by the auth service")


class TokenError(TradeplaneError, ValueError):
    """A token that is not a NATS JWT."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], signer: nkeys.KeyPair, now: int) -> str:
    """A NATS JWT of ``claims``, issued and signed by ``signer``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {**claims, "iat": now, "iss": signer.public_key.decode()}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = signer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT (unverified: only nats-server can publish requests here)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWT")
    try:
        claims = json.loads(_unb64(parts[1]))
    except ValueError as exc:
        raise TokenError(f"unreadable claims: {exc}") from None
    if not isinstance(claims, dict):
        raise TokenError("claims are not an object")
    return claims


def user_claims(account: str, user_nkey: str, now: int) -> dict[str, Any]:
    """The user token's claims: the trader's permissions, in the exchange's account."""
    permissions = trader_permissions(account)
    return {
        "aud": TRADERS_ACCOUNT, "sub": user_nkey, "name": account,
        "exp": now + TOKEN_LIFETIME,
        "nats": {"pub": {"allow": list(permissions.publish)},
                 "sub": {"allow": list(permissions.subscribe)},
                 "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2},
    }


class AuthService:
    """Answers nats-server's authorization requests and closes revoked connections."""

    def __init__(self, callout: Client, system: Client, pool: asyncpg.Pool,
                 issuer: nkeys.KeyPair) -> None:
        self.callout = callout
        self.system = system
        self.pool = pool
        self.issuer = issuer
        self._swept_all = False
        """Whether every revoked account has been swept once (after a start)."""

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Answer requests and sweep revoked accounts until cancelled."""
        subscription = await self.callout.subscribe(AUTH_SUBJECT, queue=AUTH_QUEUE,
                                                    cb=self._on_request)
        await self.callout.flush()
        if started is not None:
            started.set()
        try:
            while True:
                try:
                    await self.sweep()
                except (*NATS_ERRORS, *DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                    log.warning("auth: revocation sweep failed (%s: %s); trying again",
                                type(exc).__name__, exc)
                await asyncio.sleep(SWEEP_EVERY)
        finally:
            await subscription.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = decode_jwt(msg.data[:MAX_REQUEST].decode(errors="replace"))
            details = request["nats"]
            server_id = details["server_id"]["id"]
            user_nkey = details["user_nkey"]
            options = details.get("connect_opts") or {}
            account, secret = options.get("user"), options.get("pass")
            if not (isinstance(server_id, str) and isinstance(user_nkey, str)):
                raise TokenError("no server id or user key")
        except (TokenError, KeyError, TypeError, AttributeError) as exc:
            log.warning("auth: unreadable authorization request: %s", exc)
            UNTRUSTED_SKIPPED.labels("auth", "authorization request").inc()
            AUTHORIZATIONS.labels("malformed").inc()
            return
        now = int(time.time())
        answer: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if not isinstance(account, str) or not isinstance(secret, str):
            answer["error"] = "a trader connects with user = account, password = secret"
            result = "refused"
        else:
            try:
                allowed = await asyncio.wait_for(self._verify(account, secret),
                                                 DATABASE_TIMEOUT)
            except (TimeoutError, *DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("auth: cannot check account %r (%s); refused for now",
                            account[:64], type(exc).__name__)
                answer["error"] = "accounts unavailable, try again"
                result = "unavailable"
            else:
                if allowed:
                    answer["jwt"] = encode_jwt(user_claims(account, user_nkey, now),
                                               self.issuer, now)
                    result = "accepted"
                else:
                    answer["error"] = "unknown account, wrong secret or revoked"
                    result = "refused"
        if result != "accepted":
            log.info("auth: connection as %r refused: %s", str(account)[:64], answer["error"])
        AUTHORIZATIONS.labels(result).inc()
        response = encode_jwt({"aud": server_id, "sub": user_nkey, "nats": answer},
                              self.issuer, now)
        try:
            await msg.respond(response.encode())
        except NATS_ERRORS as exc:
            log.warning("auth: could not answer an authorization request: %s", exc)

    async def _verify(self, account: str, secret: str) -> bool:
        async with self.pool.acquire() as connection:
            return await accounts.verify(connection, account, secret)

    async def sweep(self) -> None:
        """Close the live connections of accounts revoked lately (all, the first time)."""
        async with self.pool.acquire() as connection:
            if self._swept_all:
                revoked = await accounts.recently_revoked(connection, SWEEP_WINDOW)
            else:
                revoked = await accounts.all_revoked(connection)
        for account in revoked:
            await self.close_connections(account)
        self._swept_all = True

    async def close_connections(self, account: str) -> int:
        """Kick every live connection authenticated as ``account``, on every server."""
        closed = 0
        for server_id, cid in await self._connections(account):
            await self.system.request(f"$SYS.REQ.SERVER.{server_id}.KICK",
                                      json.dumps({"cid": cid}).encode(), timeout=2)
            closed += 1
        if closed:
            log.info("auth: closed %d connection(s) of revoked account %s", closed, account)
            KICKED.inc(closed)
        return closed

    async def _connections(self, account: str) -> list[tuple[str, int]]:
        """(server id, client id) of each connection as ``account``: every server answers
        a ``PING.CONNZ``, so answers are gathered for a moment."""
        found: list[tuple[str, int]] = []
        inbox = self.system.new_inbox()

        async def on_answer(msg: Msg) -> None:
            try:
                answer = json.loads(msg.data)
                server_id = answer["server"]["id"]
                for connection in answer["data"].get("connections") or []:
                    if connection.get("authorized_user") == account:
                        found.append((server_id, int(connection["cid"])))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("auth: unreadable CONNZ answer: %s", exc)

        subscription = await self.system.subscribe(inbox, cb=on_answer)
        try:
            await self.system.publish(
                "$SYS.REQ.SERVER.PING.CONNZ",
                json.dumps({"acc": TRADERS_ACCOUNT, "user": account, "auth": True,
                            "limit": 100000}).encode(), reply=inbox)
            await self.system.flush()
            await asyncio.sleep(CONNZ_WAIT)  # every server that is up has answered by now
        finally:
            await subscription.unsubscribe()
        return found


async def run_auth(servers: str, pool: asyncpg.Pool, issuer_seed_file: str, access: Access,
                   system: Access, started: asyncio.Event | None = None,
                   health: ServiceHealth | None = None) -> None:
    """The auth service until cancelled: ``pool`` on the accounts' (migrated) database,
    ``access`` its callout user's credentials, ``system`` its system-account user's,
    ``issuer_seed_file`` the signing key NATS trusts. ``health`` watches both
    connections and is told when callouts are answered."""
    if health is not None:
        started = health.started
    try:
        issuer = nkeys.from_seed(Path(issuer_seed_file).read_text().strip().encode())
    except (OSError, ValueError, nkeys.NkeysError) as exc:
        raise AccessError(f"issuer seed {issuer_seed_file}: {exc}") from None
    callout = await connect(servers, "tradeplane-auth", "auth", access)
    try:
        system_connection = await connect(servers, "tradeplane-auth-system", "auth", system)
        if health is not None:
            health.watch("nats (callout)", callout)
            health.watch("nats (system)", system_connection)
        try:
            await AuthService(callout, system_connection, pool, issuer).run(started)
        finally:
            await system_connection.drain()
    finally:
        await callout.drain()
