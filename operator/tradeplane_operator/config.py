"""The operator's settings: one documented place, read from the environment.

The Helm chart sets these on the operator's Deployment; tests build a ``Config``
directly. Everything an engine pod needs that is not in the Market (the image, where
NATS and PostgreSQL are) comes from here, so a Market says only what is traded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from tradeplane_operator.crd import (
    DNS_SUBDOMAIN,
    SecretReference,
    Toleration,
    TopologySpreadConstraint,
    WhenUnsatisfiable,
)

PREFIX = "tradeplane.dev"
"""The prefix of what users and other components read and write on Markets and children
(annotations, labels, the finalizer)."""
KOPF_PREFIX = f"operator.{PREFIX}"
"""Where kopf keeps its own state on a Market (progress, last handled configuration).
It must not be ``PREFIX``: kopf leaves its prefix's annotations out of the changes it
reacts to, and the annotations below must start handlers at once."""
PAUSE_ANNOTATION = f"{PREFIX}/paused"
"""``"true"``: the operator leaves the Market and its children alone (status still
follows the replicas)."""
SWITCHOVER_ANNOTATION = f"{PREFIX}/switchover-to"
"""A replica's name: hand the lead to it (a planned switchover), then the annotation goes."""
DELETION_PROTECTION_ANNOTATION = f"{PREFIX}/deletion-protection"
"""Anything but ``"false"``, or absent: deleting the Market is refused (it would cancel
every open order). The operator holds the deletion; the chart's admission policy refuses
it up front."""
FINALIZER = f"{PREFIX}/finalizer"
MARKET_LABEL = f"{PREFIX}/market"

ZONE_SPREAD = TopologySpreadConstraint(topology_key="topology.kubernetes.io/zone",
                                       max_skew=1,
                                       when_unsatisfiable=WhenUnsatisfiable.SCHEDULE_ANYWAY)
"""The default spread of a market's engines: over zones, so that a zone's outage takes
at most part of them, as a preference (a cluster in one zone still schedules them)."""


@dataclass(frozen=True)
class Config:
    nats_url: str = "nats://nats:4222"
    """Where engines, gateways, recorders and the operator meet."""
    nats_credentials: str | None = None
    """The operator's NATS credentials file (``{"user", "password"}``; docs/security.md)."""
    nats_ca: str | None = None
    """A CA bundle (a file) that NATS's TLS certificate is checked with; None: no TLS
    unless the URL asks for it (``tls://``), checked then with the system's CAs."""
    nats_cert: str | None = None
    nats_key: str | None = None
    """The operator's client certificate and its key (files), when NATS asks for one
    (without a key file, the key is in the certificate's file)."""
    engine_credentials_secret: str | None = None
    """A Secret in the Market's namespace with the engines' NATS credentials file: each
    engine pod mounts its key alone. None: engines connect without credentials."""
    engine_credentials_key: str = "engine.json"
    engine_ca_secret: str | None = None
    """A Secret in the Market's namespace with the CA bundle for NATS's TLS certificate,
    mounted into each engine pod (or ``engine_ca_config_map``: a ConfigMap; not both)."""
    engine_ca_config_map: str | None = None
    engine_ca_key: str = "ca.crt"
    """The CA bundle's key in that Secret or ConfigMap."""
    engine_client_cert_secret: str | None = None
    """A TLS Secret (``tls.crt``, ``tls.key``) in the Market's namespace: the engines'
    client certificate, when NATS asks for one."""
    engine_image: str = "ghcr.io/tradeplane/tradeplane:0.1.0"
    """The engine image unless a Market names its own (``spec.engine.image``)."""
    allowed_engine_images: tuple[str, ...] = ()
    """Images a Market may name, as shell-style patterns of the whole reference
    (images.py); empty: the repository of ``engine_image`` only, at any tag or digest;
    ``*``: any image."""
    image_pull_policy: str = "IfNotPresent"
    postgres_secret: str | None = None
    """A Secret in the Market's namespace holding the PostgreSQL DSN: engines start from
    the newest snapshot. Optional for the pods: without it they replay the stream."""
    postgres_secret_key: str = "dsn"
    stream_replicas: int = 1
    """JetStream replicas of each market's streams (3 on a NATS cluster)."""
    anti_affinity: str = "required"
    """``required``: never two engines of a market on one node, so one node's loss never
    takes a leader and its standby; ``preferred``: spread them when the cluster can, for
    one-node clusters (a standby beside its leader protects from a crash, not a lost
    node). A Market may say otherwise (``engine.template.pod.antiAffinity``)."""
    engine_node_selector: Mapping[str, str] = field(default_factory=dict)
    """The engine pods' ``nodeSelector`` unless a Market gives its own."""
    engine_tolerations: tuple[Toleration, ...] = ()
    """The engine pods' tolerations unless a Market gives its own."""
    engine_topology_spread: tuple[TopologySpreadConstraint, ...] = (ZONE_SPREAD,)
    """The engine pods' topology spread constraints unless a Market gives its own; a
    constraint without a ``labelSelector`` counts the market's engine pods."""
    engine_priority_class: str | None = None
    """The engine pods' PriorityClass unless a Market names its own."""
    engine_image_pull_secrets: tuple[str, ...] = ()
    """Secrets (in each Market's namespace) the engine image is pulled with, unless a
    Market names its own. The chart passes its ``imagePullSecrets``."""
    health_port: int = 8080
    status_interval: float = 2.0
    """Seconds between two readings of the replicas' status."""
    drift_interval: float = 30.0
    """Seconds between two checks that the children still look as they should (a
    deleted child is recreated at once; this catches edits)."""
    final_snapshot_timeout: float = 120.0
    """Seconds a deletion waits for the leader and a recorder (the final snapshot) before
    it goes on without them."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: the whole cluster."""
    leader_election: bool = True
    """Act only while holding the Lease (leadership.py), so that several replicas can
    run; false: act at once, alone (never run two so)."""
    lease_name: str = "tradeplane-operator"
    lease_namespace: str = "default"
    """Where the Lease is: the chart sets the operator's own namespace."""
    identity: str = field(default_factory=lambda: _own_identity(os.environ))
    """This replica's name in the Lease: the pod's name, else host and a random part."""
    lease_duration: float = 15.0
    """Seconds a standby waits, after it last saw the Lease change, before it takes it."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it stops acting."""
    retry_period: float = 2.0
    """Seconds between two readings (standby) or renewals (leader) of the Lease."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        default = cls()
        namespaces = tuple(filter(None, env.get("TRADEPLANE_NAMESPACES", "").split(",")))
        return cls(
            nats_url=env.get("TRADEPLANE_NATS", default.nats_url),
            nats_credentials=env.get("TRADEPLANE_CREDENTIALS") or None,
            nats_ca=env.get("TRADEPLANE_NATS_CA") or None,
            nats_cert=env.get("TRADEPLANE_NATS_CERT") or None,
            nats_key=env.get("TRADEPLANE_NATS_KEY") or None,
            engine_credentials_secret=env.get("TRADEPLANE_ENGINE_CREDENTIALS_SECRET") or None,
            engine_credentials_key=env.get("TRADEPLANE_ENGINE_CREDENTIALS_KEY")
            or default.engine_credentials_key,
            engine_ca_secret=env.get("TRADEPLANE_ENGINE_NATS_CA_SECRET") or None,
            engine_ca_config_map=env.get("TRADEPLANE_ENGINE_NATS_CA_CONFIGMAP") or None,
            engine_ca_key=env.get("TRADEPLANE_ENGINE_NATS_CA_KEY") or default.engine_ca_key,
            engine_client_cert_secret=env.get("TRADEPLANE_ENGINE_NATS_CLIENT_CERT_SECRET")
            or None,
            engine_image=env.get("TRADEPLANE_ENGINE_IMAGE", default.engine_image),
            allowed_engine_images=tuple(filter(None, (
                pattern.strip() for pattern in
                env.get("TRADEPLANE_ALLOWED_ENGINE_IMAGES", "").split(",")))),
            image_pull_policy=env.get("TRADEPLANE_IMAGE_PULL_POLICY",
                                      default.image_pull_policy),
            postgres_secret=env.get("TRADEPLANE_POSTGRES_SECRET") or None,
            postgres_secret_key=env.get("TRADEPLANE_POSTGRES_SECRET_KEY",
                                        default.postgres_secret_key),
            stream_replicas=int(env.get("TRADEPLANE_STREAM_REPLICAS",
                                        default.stream_replicas)),
            anti_affinity=env.get("TRADEPLANE_ANTI_AFFINITY") or default.anti_affinity,
            engine_node_selector=_json(env, "TRADEPLANE_ENGINE_NODE_SELECTOR",
                                       dict[str, str], default.engine_node_selector),
            engine_tolerations=tuple(_json(env, "TRADEPLANE_ENGINE_TOLERATIONS",
                                           list[Toleration], default.engine_tolerations)),
            engine_topology_spread=tuple(_json(env, "TRADEPLANE_ENGINE_TOPOLOGY_SPREAD",
                                               list[TopologySpreadConstraint],
                                               default.engine_topology_spread)),
            engine_priority_class=env.get("TRADEPLANE_ENGINE_PRIORITY_CLASS") or None,
            engine_image_pull_secrets=tuple(
                secret.name for secret in _json(env, "TRADEPLANE_ENGINE_IMAGE_PULL_SECRETS",
                                                list[SecretReference], ())),
            status_interval=float(env.get("TRADEPLANE_STATUS_INTERVAL",
                                          default.status_interval)),
            drift_interval=float(env.get("TRADEPLANE_DRIFT_INTERVAL",
                                         default.drift_interval)),
            health_port=int(env.get("TRADEPLANE_ENGINE_HEALTH_PORT", default.health_port)),
            final_snapshot_timeout=float(env.get("TRADEPLANE_FINAL_SNAPSHOT_TIMEOUT",
                                                 default.final_snapshot_timeout)),
            namespaces=namespaces,
            leader_election=env.get("TRADEPLANE_LEADER_ELECTION", "true").lower()
            not in ("false", "0", "no"),
            lease_name=env.get("TRADEPLANE_LEASE_NAME") or default.lease_name,
            lease_namespace=env.get("TRADEPLANE_LEASE_NAMESPACE") or default.lease_namespace,
            identity=_own_identity(env),
            lease_duration=float(env.get("TRADEPLANE_LEASE_DURATION",
                                         default.lease_duration)),
            renew_deadline=float(env.get("TRADEPLANE_RENEW_DEADLINE",
                                         default.renew_deadline)),
            retry_period=float(env.get("TRADEPLANE_RETRY_PERIOD", default.retry_period)),
        )

    def __post_init__(self) -> None:
        if self.anti_affinity not in ("required", "preferred"):
            raise ValueError(f"anti-affinity must be required or preferred, "
                             f"not {self.anti_affinity!r}")
        for name in (self.engine_priority_class or "a", *self.engine_image_pull_secrets):
            if not re.fullmatch(DNS_SUBDOMAIN, name) or len(name) > 253:
                raise ValueError(f"{name!r} is no Kubernetes object name (a PriorityClass "
                                 "or a pull Secret of the engines)")
        if self.stream_replicas not in (1, 3, 5):
            raise ValueError("stream replicas must be 1, 3 or 5")
        if self.engine_ca_secret and self.engine_ca_config_map:
            raise ValueError("the engines' CA bundle comes from a Secret or a ConfigMap, "
                             "not both")
        if self.nats_key and not self.nats_cert:
            raise ValueError("a NATS client key without its certificate")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < "
                             "lease duration: a leader must give up before another may "
                             "take over")


def _json[T](env: Mapping[str, str], name: str, kind: type[T], default: Any) -> T | Any:
    """``name``'s value, JSON of ``kind`` (as the chart writes it with ``toJson``); the
    default when unset or empty. A wrong value says which variable and what is wrong."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return pydantic.TypeAdapter(kind).validate_python(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from exc
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'the value'}: {error['msg']}"
            for error in exc.errors())
        raise ValueError(f"{name}: {problems}") from exc


def _own_identity(env: Mapping[str, str]) -> str:
    pod = env.get("TRADEPLANE_POD_NAME")
    return pod or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
