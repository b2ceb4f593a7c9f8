"""The operator's side of the exchange's NATS protocol (docs/protocol.md, docs/failover.md).

The operator imports no engine code: it speaks to the engines as any NATS client
would, and a test checks that what it writes is what the engines read. It

- writes a Market's definition to the ``tp-markets`` bucket (engines and gateways follow it);
- sequences admin commands (``setTradingMode``, ``cancelAll`` of every account) in the
  market's command stream, with a message id so a retried handler sequences nothing twice;
- reads what the replicas publish (``tp-replicas``) and who holds the lease (``tp-leases``);
- asks the leader for a planned switchover and the recorder for a final snapshot.

Nothing here sits in the failover path: replicas elect their leader among themselves.

What the operator reads from the buckets, anyone with access to them may have written:
a value that is not what an engine (or the operator itself) writes is skipped with a log
line and counted in ``tradeplane_operator_untrusted_skipped_total`` (the engine's own
counter is out of reach: the operator imports no engine code).
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from tradeplane_operator.errors import ExchangeError, RefusedError, UnansweredError

log = logging.getLogger(__name__)

MARKETS_BUCKET = "tp-markets"
REPLICAS_BUCKET = "tp-replicas"
LEASES_BUCKET = "tp-leases"

MAX_DEFINITION = 64 * 1024
"""Bytes: a larger value in ``tp-markets`` is no definition (the engines' limit too)."""

UNTRUSTED_SKIPPED = Counter(
    "tradeplane_operator_untrusted_skipped",
    "Values in the exchange's buckets the operator read and skipped as malformed "
    "(what: market definition, replica report, lease)", ["what"])


def command_stream(market: str) -> str:
    return f"tp-cmd-{market}"


def bucket_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def bucket_key_prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


def command_subject(market: str) -> str:
    return f"tp.cmd.{market}"


def engine_subject(market: str, what: str) -> str:
    return f"tp.engine.{market}.{what}"


def recorder_subject(market: str, what: str) -> str:
    return f"tp.recorder.{market}.{what}"


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's last status in ``tp-replicas`` (renewed every second, gone after 10)."""

    replica: str
    role: str
    epoch: int
    ready: bool
    sequence: int
    lag: int
    mode: str
    published_through: int
    failovers: int
    last_failover: int | None
    """Nanoseconds since the Unix epoch when this replica last took the lead."""

    @classmethod
    def decode(cls, data: bytes) -> ReplicaReport:
        """Raises ``ValueError`` for anything an engine does not write."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("replica"), str):
            raise ValueError("not a replica report")
        last_failover = raw.get("lastFailover")
        if last_failover is not None and not _is_time(last_failover):
            raise ValueError(f"lastFailover {str(last_failover)[:40]} is not a time")
        try:
            return cls(replica=raw["replica"], role=str(raw.get("role", "standby")),
                       epoch=int(raw.get("epoch", 0)), ready=bool(raw.get("ready", False)),
                       sequence=int(raw.get("sequence", 0)), lag=int(raw.get("lag", 0)),
                       mode=str(raw.get("mode", "")),
                       published_through=int(raw.get("publishedThrough", 0)),
                       failovers=int(raw.get("failovers", 0)),
                       last_failover=last_failover)
        except (TypeError, OverflowError) as exc:  # a number that is a list, or infinite
            raise ValueError(str(exc)) from exc


def _is_time(value: Any) -> bool:
    """Nanoseconds since the Unix epoch, before the year 2262 (what int64 holds)."""
    return type(value) is int and 0 <= value < 2**63


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    taken: str = "election"
    """How the holder got it: ``election``, ``failover`` or ``handover`` (a switchover)."""


def skipped(what: str, where: str, exc: Exception) -> None:
    """A malformed value read: one log line, one count."""
    log.warning("%s skipped: %s", where, str(exc)[:200])
    UNTRUSTED_SKIPPED.labels(what).inc()


def admin_command(command: dict[str, Any]) -> bytes:
    """An admin command as the command stream carries it; the stream stamps the sequence
    and time (the zeros are placeholders the engine overwrites)."""
    return json.dumps({**command, "sequence": 0, "timestamp": 0},
                      separators=(",", ":")).encode()


def tls_context(ca_file: str | None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context the engines and services build from the same files
    (``TRADEPLANE_NATS_CA``, ``_CERT``, ``_KEY``): the server's certificate checked
    against ``ca_file`` (the system's CAs without one), and a client certificate when
    given. None when neither file is: plain NATS, or TLS as the URL says."""
    if ca_file is None and cert_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ExchangeError(f"NATS TLS files: {exc}") from exc
    return context


class Exchange:
    """One NATS connection for the whole operator."""

    def __init__(self, nc: Client, stream_replicas: int = 1) -> None:
        self.nc = nc
        self.stream_replicas = stream_replicas
        self.js = nc.jetstream()
        self._buckets: dict[str, KeyValue] = {}

    @classmethod
    async def connect(cls, url: str, stream_replicas: int = 1,
                      credentials_file: str | None = None, *, ca_file: str | None = None,
                      cert_file: str | None = None, key_file: str | None = None
                      ) -> Exchange:
        """Connect as the operator: with a credentials file (``{"user", "password"}``),
        its replies come to the operator's own inboxes (docs/security.md); with a CA
        bundle (and a client certificate), over TLS checked against that CA."""
        login: dict[str, Any] = {}
        if credentials_file is not None:
            with open(credentials_file) as file:
                credentials = json.load(file)
            login = {"user": credentials["user"], "password": credentials["password"],
                     "inbox_prefix": f"_SVC.{credentials['user']}"}
        context = tls_context(ca_file, cert_file, key_file)
        if context is not None:
            login["tls"] = context
        nc = await nats.connect(url, name="tradeplane-operator", max_reconnect_attempts=-1,
                                reconnect_time_wait=0.5, connect_timeout=3, **login)
        return cls(nc, stream_replicas)

    async def close(self) -> None:
        await self.nc.drain()

    async def _bucket(self, name: str, create: bool = False) -> KeyValue | None:
        if name not in self._buckets:
            try:
                self._buckets[name] = await self.js.key_value(name)
            except (BucketNotFoundError, NotFoundError):
                if not create:
                    return None
                self._buckets[name] = await self.js.create_key_value(
                    bucket=name, history=5, replicas=self.stream_replicas)
        return self._buckets[name]

    # -- definitions -------------------------------------------------------------------

    async def _value(self, bucket_name: str, key: str) -> bytes | None:
        """A key's value, or None when the bucket, the key or a value is missing."""
        bucket = await self._bucket(bucket_name)
        if bucket is None:
            return None
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:  # deleted or expired included
            return None
        return entry.value or None

    async def definition(self, market: str) -> dict[str, Any] | None:
        """The definition in the bucket; None if there is none, or none of this market
        (a value someone else wrote: the operator's next write replaces it)."""
        value = await self._value(MARKETS_BUCKET, market)
        if not value:
            return None
        try:
            if len(value) > MAX_DEFINITION:
                raise ValueError(f"{len(value)} bytes, more than {MAX_DEFINITION}")
            definition = json.loads(value)
            if not isinstance(definition, dict) or definition.get("name") != market:
                raise ValueError("not a definition of this market")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            skipped("market definition", f"market {market}: definition in {MARKETS_BUCKET}",
                    exc)
            return None
        return definition

    async def put_definition(self, market: str, definition: dict[str, Any]) -> None:
        bucket = await self._bucket(MARKETS_BUCKET, create=True)
        assert bucket is not None
        await bucket.put(market, json.dumps(definition, separators=(",", ":")).encode())

    async def delete_definition(self, market: str) -> None:
        bucket = await self._bucket(MARKETS_BUCKET)
        if bucket is not None:
            await bucket.delete(market)

    # -- the command stream ------------------------------------------------------------

    async def has_command_stream(self, market: str) -> bool:
        try:
            await self.js.stream_info(command_stream(market))
        except NotFoundError:
            return False
        return True

    async def sequence(self, market: str, command: dict[str, Any], message_id: str
                       ) -> tuple[int, bool]:
        """Sequence an admin command; its stream sequence and whether it is new (a
        retried message id gets the first one's sequence back)."""
        ack = await self.js.publish(command_subject(market), admin_command(command),
                                    stream=command_stream(market),
                                    headers={"Nats-Msg-Id": message_id})
        return ack.seq, not ack.duplicate

    # -- what the replicas say ---------------------------------------------------------

    async def replicas(self, market: str) -> list[ReplicaReport]:
        """Every replica's last report.

        The keys come from the bucket's stream (its subjects under ``<market>.``) and
        each value from a direct read. A KV watch is not used: its "initial values done"
        marker can come before values already on their way, which read as no replicas
        at all."""
        if await self._bucket(REPLICAS_BUCKET) is None:
            return []
        prefix = bucket_key_prefix(REPLICAS_BUCKET)
        info = await self.js.stream_info(bucket_stream(REPLICAS_BUCKET),
                                         subjects_filter=f"{prefix}{market}.*")
        reports = []
        for subject in sorted(info.state.subjects or {}):
            value = await self._value(REPLICAS_BUCKET, subject[len(prefix):])
            if value is None:
                continue
            try:
                reports.append(ReplicaReport.decode(value))
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
                skipped("replica report", f"market {market}: {subject[len(prefix):]} in "
                        f"{REPLICAS_BUCKET}", exc)
        return sorted(reports, key=lambda report: report.replica)

    async def lease(self, market: str) -> Lease | None:
        """The market's lease; None if there is none, or the value is not a lease (the
        replicas treat that one as lapsed and replace it)."""
        value = await self._value(LEASES_BUCKET, market)
        if value is None:
            return None
        try:
            raw = json.loads(value)
            if not isinstance(raw, dict):
                raise ValueError("not a lease")
            return Lease(holder=str(raw.get("holder", "")), epoch=int(raw.get("epoch", 0)),
                         taken=str(raw.get("taken", "election")))
        except (ValueError, TypeError, OverflowError) as exc:
            skipped("lease", f"market {market}: lease in {LEASES_BUCKET}", exc)
            return None

    # -- requests ----------------------------------------------------------------------

    async def request(self, subject: str, body: dict[str, Any],
                      timeout: float) -> dict[str, Any]:
        try:
            reply = await self.nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        except (TimeoutError, NoRespondersError, NatsTimeout) as exc:
            raise UnansweredError(f"no answer on {subject}") from exc
        answer = json.loads(reply.data)
        if not isinstance(answer, dict):
            raise RefusedError(f"{subject}: unexpected answer {answer!r}")
        if "error" in answer:
            raise RefusedError(f"{subject}: {answer['error']}")
        return answer

    async def leader_status(self, market: str) -> dict[str, Any]:
        return await self.request(engine_subject(market, "status"), {}, timeout=2.0)

    async def switchover(self, market: str, to: str) -> dict[str, Any]:
        return await self.request(engine_subject(market, "switchover"), {"to": to},
                                  timeout=5.0)

    async def final_snapshot(self, market: str, through: int) -> dict[str, Any]:
        return await self.request(recorder_subject(market, "snapshot"),
                                  {"through": through}, timeout=15.0)
