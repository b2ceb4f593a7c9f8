"""Who may do what on NATS: identities, their credentials and their permissions.

Every connection to a tradeplane NATS authenticates (docs/security.md):

- A **service** (gateway, engine, recorder, operator, admin; ``auth`` and ``sys`` for
  the auth service) is a user of the NATS configuration, with a password and the fixed
  permissions below. Its reply inboxes are ``_SVC.<service>.>``.
- A **trader** authenticates with the secret a tradeplane administrator issued for the
  account; the auth service checks it and hands NATS the trader's permissions:
  its own requests, its own private updates, public market data, and its own reply
  inboxes ``_INBOX.<account>.>``. A gateway answers a request only on the requester's
  inbox, so no trader can steer a reply anywhere else.

Each service gets only the subjects its work needs; in particular only engines publish
a market's events, lease, replica reports and market data, only gateways (and the
operator's sequenced admin commands) the command streams, only the operator and the
admin the market definitions and internal requests, and only the admin may delete a
stream. JetStream API rights are by operation (``$JS.API.STREAM.INFO.*``):
NATS permissions cannot match part of a token, and streams are named per market.

This module is the one place these rules are written; ``tradeplane security init``
renders them into the nats-server configuration and the auth service into each
trader's user token.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradeplane_engine.errors import TradeplaneEngineError
from tradeplane_engine.wire import (
    ANY,
    API_SUBJECTS,
    BOOK_SNAPSHOTS,
    ENGINE_SUBJECTS,
    LEASES_BUCKET,
    MARKETS_BUCKET,
    RECORDER_SUBJECTS,
    REPLICAS_BUCKET,
    LedgerSource,
    account_subject,
    account_updates,
    api_subjects,
    balances_subject,
    book_subject,
    bucket_stream,
    bucket_subjects,
    command_subject,
    engine_subject,
    event_subject,
    history_subject,
    ledger_command_subject,
    ledger_event_subject,
    ledger_subject,
    recorder_subject,
    trades_subject,
)

TRADERS_ACCOUNT = "TP"
"""The NATS account of the exchange: every service and every trader."""
AUTH_ACCOUNT = "AUTH"
"""The NATS account of the auth service's callout connection, and nothing else."""
SYSTEM_ACCOUNT = "SYS"

CREDENTIALS_ENV = "TRADEPLANE_CREDENTIALS"
"""Environment variable naming a credentials file (``--credentials`` overrides it)."""
CA_ENV = "TRADEPLANE_NATS_CA"
"""Environment variable naming the CA bundle that NATS's TLS certificate is checked with."""
CERT_ENV = "TRADEPLANE_NATS_CERT"
KEY_ENV = "TRADEPLANE_NATS_KEY"
"""A client certificate and its key, when NATS asks for one (mutual TLS)."""


class AccessError(TradeplaneEngineError):
    """A credentials file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Credentials:
    """A NATS user and password, as a credentials file holds them (JSON, mode 0600)."""

    user: str
    password: str

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise AccessError(f"credentials file {path}: {exc}") from None
        if (not isinstance(data, dict) or not isinstance(data.get("user"), str)
                or not isinstance(data.get("password"), str)):
            raise AccessError(f'credentials file {path}: expected {{"user": ..., '
                              f'"password": ...}}')
        return cls(data["user"], data["password"])

    def save(self, path: Path) -> None:
        """Write the file readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"user": self.user, "password": self.password}, file)
            file.write("\n")
        path.chmod(0o600)


@dataclass(frozen=True)
class Access:
    """How a process reaches NATS: its credentials and, with TLS, the files to check
    the server (and prove itself) with."""

    credentials: Credentials | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_environment(cls, environment: Mapping[str, str],
                         credentials_file: str | None = None) -> Access:
        path = credentials_file or environment.get(CREDENTIALS_ENV)
        return cls(Credentials.load(path) if path else None, environment.get(CA_ENV) or None,
                   environment.get(CERT_ENV) or None, environment.get(KEY_ENV) or None)

    def tls(self) -> ssl.SSLContext | None:
        if self.ca_file is None and self.cert_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise AccessError(f"NATS TLS files: {exc}") from None
        return context

    def options(self, inbox_prefix: str | None = None) -> dict[str, Any]:
        """``nats.connect`` keyword arguments; a service's inboxes are its own by default."""
        options: dict[str, Any] = {}
        if self.credentials is not None:
            options["user"] = self.credentials.user
            options["password"] = self.credentials.password
            options["inbox_prefix"] = inbox_prefix or own_inbox(self.credentials.user)
        elif inbox_prefix is not None:
            options["inbox_prefix"] = inbox_prefix
        tls = self.tls()
        if tls is not None:
            options["tls"] = tls
        return options


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May answer a request it received, on the request's reply subject (once)."""

    def as_config(self) -> dict[str, object]:
        """The nats-server configuration's ``permissions`` block."""
        block: dict[str, object] = {"publish": {"allow": list(self.publish)},
                                    "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            block["allow_responses"] = True
        return block


def service_inbox(service: str) -> str:
    """The prefix of a service's reply inboxes."""
    return f"_SVC.{service}"


def trader_inbox(account: str) -> str:
    """The prefix of a trader's reply inboxes: a gateway answers nowhere else."""
    return f"_INBOX.{account}"


def own_inbox(user: str) -> str:
    """The inbox prefix of a NATS user: a service's, or else a trader's."""
    return service_inbox(user) if user in SERVICE_USERS else trader_inbox(user)


def is_inbox(subject: str) -> bool:
    """Whether a reply subject is a trader-style inbox (``_INBOX.…``): a responder that
    traders can reach answers nowhere else. A reply subject is the requester's choice,
    and could name a market's events, its book, another account's updates or a
    service's inbox (``_SVC.…``); a service that asks such a responder uses an
    ``_INBOX.`` prefix for it (``tradeplane book`` as the admin does)."""
    return subject.startswith("_INBOX.")


GATEWAY_INBOX = service_inbox("gateway")
"""Where engines send a command's events (the ``Tp-Reply`` header): only to gateways."""

_MARKETS_STREAM = bucket_stream(MARKETS_BUCKET)
_FOLLOW_MARKETS = (  # watch the markets bucket (an ordered push consumer)
    f"$JS.API.STREAM.INFO.{_MARKETS_STREAM}", f"$JS.API.CONSUMER.CREATE.{_MARKETS_STREAM}",
    f"$JS.API.CONSUMER.INFO.{_MARKETS_STREAM}.*", f"$JS.FC.{_MARKETS_STREAM}.>",
)
_READ_STREAMS = (  # read any stream: info, consumers (push, ordered, pull), messages
    "$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.CONSUMER.CREATE.*", "$JS.API.CONSUMER.INFO.*.*", "$JS.API.CONSUMER.DELETE.*.*",
    "$JS.API.CONSUMER.MSG.NEXT.*.*", "$JS.FC.>",
)
_CREATE_MARKETS = (f"$JS.API.STREAM.CREATE.{_MARKETS_STREAM}",)


def _service(name: str, publish: tuple[str, ...], subscribe: tuple[str, ...] = (), *,
             allow_responses: bool = False) -> Permissions:
    return Permissions(publish, (f"{service_inbox(name)}.>", *subscribe), allow_responses)


SERVICES: dict[str, Permissions] = {
    # Order entry: every request under tp.api, commands into the command streams,
    # replies to traders' inboxes only; reads the market definitions and asks engines
    # and recorders on traders' behalf; answers book snapshot requests for markets that
    # do not exist (an engine's leader answers its own market's).
    "gateway": _service("gateway", (
        command_subject(ANY), ledger_command_subject(ANY, LedgerSource.ORDER),
        ledger_subject(ANY, "balances"),
        "_INBOX.*.>",
        engine_subject(ANY, "order"),
        engine_subject(ANY, "openOrders"), history_subject(ANY, "order"),
        history_subject(ANY, "trades"), *_FOLLOW_MARKETS,
    ), (API_SUBJECTS, BOOK_SNAPSHOTS)),
    # Matching: a market's streams, events, market data, private updates, results to
    # gateways, lease and replica reports; answers status and switchover requests.
    "engine": _service("engine", (
        event_subject(ANY), book_subject(ANY), trades_subject(ANY), account_subject(ANY),
        bucket_subjects(LEASES_BUCKET), bucket_subjects(REPLICAS_BUCKET), f"{GATEWAY_INBOX}.>",
        ENGINE_SUBJECTS,
        *_READ_STREAMS,
        "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*",
    ), (event_subject(ANY), ENGINE_SUBJECTS, BOOK_SNAPSHOTS), allow_responses=True),
    # Balances (docs/ledger.md): a shard's streams, lease and events; the orders it
    # funded into the markets' command streams; settlements and market terms into its
    # own stream; acknowledgements and refusals to gateways; balances to accounts;
    # answers balances and status requests.
    "ledger": _service("ledger", (
        command_subject(ANY), ledger_command_subject(ANY, LedgerSource.LEDGER),
        ledger_event_subject(ANY),
        balances_subject(ANY),
        bucket_subjects(LEASES_BUCKET), f"{GATEWAY_INBOX}.>", *_READ_STREAMS,
        "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*", *_CREATE_MARKETS,
    ), (ledger_event_subject(ANY), ledger_subject(ANY, "balances"),
        ledger_subject(ANY, "status")), allow_responses=True),
    # Persistence: reads the streams; answers history, status and snapshot requests.
    "recorder": _service("recorder", (*_READ_STREAMS, *_CREATE_MARKETS),
                         (history_subject(ANY, ANY), RECORDER_SUBJECTS), allow_responses=True),
    # The operator: market definitions, sequenced admin commands, internal requests.
    "operator": _service("operator", (
        bucket_subjects(MARKETS_BUCKET), command_subject(ANY), engine_subject(ANY, "status"),
        engine_subject(ANY, "switchover"), recorder_subject(ANY, "snapshot"), *_READ_STREAMS,
        *_CREATE_MARKETS,
    )),
    # An administrator's tools: tradeplane up, status, failover, selftest; may act as any
    # account, delete streams, anything.
    "admin": Permissions((">",), (">",)),
}
"""Each service's permissions in the exchange's NATS account."""


SERVICE_USERS = frozenset({*SERVICES, "auth", "sys"})
"""Every NATS user that is not a trader (``auth`` and ``sys``: the auth service's)."""


def trader_permissions(account: str) -> Permissions:
    """What a trader may do: its own requests and updates, public market data."""
    return Permissions(
        publish=(api_subjects(account), BOOK_SNAPSHOTS),
        subscribe=(f"{trader_inbox(account)}.>", account_updates(account), book_subject(ANY),
                   trades_subject(ANY)),
    )
