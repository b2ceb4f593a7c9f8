"""The secrets of one exchange, and the nats-server configuration that enforces them.

``tradeplane security init DIR`` (and ``tradeplane up``, in its data directory) keeps:

- ``issuer.nk``: the auth service's signing key (an nkey seed; NATS trusts its public key);
- ``credentials/<service>.json``: each service identity's NATS user and password;
- ``nats-auth.conf``: the nats-server ``accounts`` and ``authorization`` blocks, with each
  service's permissions from ``tradeplane_engine.access``; include it in nats-server's
  configuration.

Files are created once, readable by their owner only, and kept: a second run reuses
the secrets and rewrites only the configuration (so a new version's permissions apply).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nkeys

from tradeplane_engine.access import (
    AUTH_ACCOUNT,
    SERVICES,
    SYSTEM_ACCOUNT,
    TRADERS_ACCOUNT,
    Credentials,
)

AUTH_USER = "auth"
"""The auth service's callout connection (in its own account)."""
SYSTEM_USER = "sys"
"""The auth service's system-account connection (it closes revoked connections)."""
IDENTITIES = (*SERVICES, AUTH_USER, SYSTEM_USER)


@dataclass(frozen=True)
class SecurityFiles:
    directory: Path

    @property
    def issuer_seed(self) -> Path:
        return self.directory / "issuer.nk"

    @property
    def nats_config(self) -> Path:
        return self.directory / "nats-auth.conf"

    def credentials(self, identity: str) -> Path:
        return self.directory / "credentials" / f"{identity}.json"

    def trader_credentials(self, account: str) -> Path:
        return self.directory / "traders" / f"{account}.json"


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    path.chmod(0o600)


def init(directory: Path) -> SecurityFiles:
    """Create what is missing under ``directory`` and (re)write the NATS configuration."""
    files = SecurityFiles(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not files.issuer_seed.exists():
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT)
        write_private(files.issuer_seed, seed.decode() + "\n")
    passwords = {}
    for identity in IDENTITIES:
        path = files.credentials(identity)
        if not path.exists():
            Credentials(identity, secrets.token_urlsafe(32)).save(path)
        passwords[identity] = Credentials.load(path).password
    write_private(files.nats_config, render_config(issuer_public(files), passwords))
    return files


def issuer_public(files: SecurityFiles) -> str:
    seed = files.issuer_seed.read_text().strip().encode()
    return str(nkeys.from_seed(seed).public_key.decode())


def render_config(issuer: str, passwords: dict[str, str]) -> str:
    """nats-server's ``accounts``, ``system_account`` and ``authorization`` (auth
    callout) configuration, as JSON (a valid nats-server configuration; quoted strings
    are taken literally, so ``$JS.API...`` is not a variable)."""
    services = [{"user": name, "password": passwords[name],
                 "permissions": permissions.as_config()}
                for name, permissions in SERVICES.items()]
    config = {
        "accounts": {
            AUTH_ACCOUNT: {"users": [{"user": AUTH_USER, "password": passwords[AUTH_USER]}]},
            TRADERS_ACCOUNT: {"jetstream": "enabled", "users": services},
            SYSTEM_ACCOUNT: {"users": [{"user": SYSTEM_USER,
                                        "password": passwords[SYSTEM_USER]}]},
        },
        "system_account": SYSTEM_ACCOUNT,
        "authorization": {"auth_callout": {
            "issuer": issuer, "account": AUTH_ACCOUNT,
            "auth_users": [AUTH_USER, SYSTEM_USER, *SERVICES],
        }},
    }
    return ("# tradeplane: NATS accounts, service users and the auth callout "
            "(docs/security.md)\n" + json.dumps(config, indent=2)[1:-1].strip() + "\n")
