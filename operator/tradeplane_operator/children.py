"""What a Market becomes in Kubernetes: pure functions from the Market to its children.

- a StatefulSet of engine replicas: stable names (``<market>-engine-0``, ``-1``) are the
  replicas' names in the market's lease, so status and switchover speak of pods;
  probes on the engine's health port (``/readyz`` is true once a replica has caught up
  with the command stream, ``/livez`` while its markets make progress; a startup probe
  on ``/readyz`` keeps liveness off while a replica replays its stream); required
  anti-affinity so a node failure takes one replica, not the market, and a spread over
  zones; placement (node selector, tolerations, spread, priority, pull secrets) from the
  operator's settings, replaced field by field by the Market's ``engine.template.pod``;
  its NATS credentials (and TLS files) are mounted from Secrets in the Market's namespace,
  read-only and readable by the pod's group only, never put in its environment;
- a headless Service for the replicas' stable DNS names and their health port;
- a PodDisruptionBudget of one: a drain or upgrade takes one replica at a time, so a
  standby is always there to take the lead.

Every child carries an owner reference to its Market (cascading deletion and
``kubectl get --show-kind`` lineage) and the market's labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tradeplane_operator import quantity
from tradeplane_operator.config import MARKET_LABEL, Config
from tradeplane_operator.crd import (
    GROUP,
    KIND,
    VERSION,
    MarketSpec,
    PodTemplate,
    Toleration,
    TopologySpreadConstraint,
)

MAX_NAME = 40
GRACE_PERIOD = 30
"""Seconds an engine pod has after SIGTERM: a leader hands its lease to a standby within
10 of them, then exits (docs/failover.md, leaving on SIGTERM)."""
"""``<name>-engine-<n>`` and the StatefulSet's revision label must fit in 63 characters."""
NAME = re.compile(rf"[a-z0-9](?:[-a-z0-9]{{0,{MAX_NAME - 2}}}[a-z0-9])?")

CREDENTIALS_DIR = "/etc/tradeplane/credentials"
"""Where a pod's NATS credentials file is mounted (the chart's pods use the same place)."""
CREDENTIALS_FILE = f"{CREDENTIALS_DIR}/engine.json"
CA_DIR = "/etc/tradeplane/nats-ca"
CA_FILE = f"{CA_DIR}/ca.crt"
CLIENT_TLS_DIR = "/etc/tradeplane/nats-client"
SECRET_MODE = 0o440
"""Owner root, group the pod's ``fsGroup``: readable by the engine's user (its group)
and nobody else."""
PUBLIC_MODE = 0o444
"""A CA bundle from a ConfigMap is no secret."""
POD_USER = 10001

STARTUP_PERIOD = 5
STARTUP_FAILURES = 120
"""The startup probe asks ``/readyz`` every 5 s, 120 times: a replica has 10 minutes to
restore its snapshot and replay the command stream after it, during which liveness is
not asked (a replaying engine is not wedged; its first batches may hold the event loop
longer than a liveness timeout). Once ready, liveness takes over."""

DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}


@dataclass(frozen=True)
class Market:
    """A Market as the operator sees it: identity and validated spec."""

    name: str
    namespace: str
    uid: str
    spec: MarketSpec
    generation: int = 1
    created: str = ""
    """``creationTimestamp``: the older of two Markets with one name keeps it."""

    @classmethod
    def from_body(cls, body: Any) -> Market:
        meta = body["metadata"]
        if not NAME.fullmatch(str(meta["name"])):
            raise ValueError(f"market name {meta['name']!r}: a DNS label of at most "
                             f"{MAX_NAME} characters (a-z, 0-9, -), so pod names fit")
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                   spec=MarketSpec.model_validate(dict(body["spec"])),
                   generation=int(meta.get("generation") or 1),
                   created=str(meta.get("creationTimestamp") or ""))

    @property
    def engine_name(self) -> str:
        return f"{self.name}-engine"


def labels(market: Market) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tradeplane",
        "app.kubernetes.io/component": "engine",
        "app.kubernetes.io/instance": market.name,
        "app.kubernetes.io/managed-by": "tradeplane-operator",
        MARKET_LABEL: market.name,
    }


def selector(market: Market) -> dict[str, str]:
    return {"app.kubernetes.io/component": "engine", MARKET_LABEL: market.name}


def _metadata(market: Market) -> dict[str, Any]:
    return {
        "name": market.engine_name,
        "namespace": market.namespace,
        "labels": labels(market),
        "ownerReferences": [{
            "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": market.name,
            "uid": market.uid, "controller": True, "blockOwnerDeletion": True,
        }],
    }


@dataclass(frozen=True)
class Placement:
    """Where the engine pods go: the operator's settings, each replaced by the Market's
    ``engine.template.pod`` field when it gives one (an empty list: none)."""

    anti_affinity: str
    node_selector: dict[str, str]
    tolerations: list[Toleration]
    spread: list[TopologySpreadConstraint]
    priority_class: str | None
    pull_secrets: list[str]
    labels: dict[str, str]
    annotations: dict[str, str]


def placement(market: Market, config: Config) -> Placement:
    template = market.spec.engine.template
    own = template.pod if template is not None and template.pod is not None else (
        PodTemplate())
    metadata = own.metadata
    return Placement(
        anti_affinity=str(own.anti_affinity or config.anti_affinity),
        node_selector=dict(config.engine_node_selector if own.node_selector is None
                           else own.node_selector),
        tolerations=list(config.engine_tolerations if own.tolerations is None
                         else own.tolerations),
        spread=list(config.engine_topology_spread
                    if own.topology_spread_constraints is None
                    else own.topology_spread_constraints),
        priority_class=(config.engine_priority_class if own.priority_class_name is None
                        else own.priority_class_name or None),
        pull_secrets=(list(config.engine_image_pull_secrets) if own.image_pull_secrets is None
                      else [secret.name for secret in own.image_pull_secrets]),
        labels=dict(metadata.labels or {}) if metadata else {},
        annotations=dict(metadata.annotations or {}) if metadata else {},
    )


def _written(value: Any) -> Any:
    """``value`` as the API server stores it back: empty strings, maps and lists left
    out (they are ``omitempty``), so what the operator writes is what it reads again."""
    if isinstance(value, dict):
        kept = {key: _written(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in ("", {}, [], None)}
    if isinstance(value, list):
        return [_written(item) for item in value]
    return value


def _toleration(toleration: Toleration) -> dict[str, Any]:
    # Kubernetes reads an omitted operator as Equal but stores it as omitted: written
    # out, the operator's own reading of it can never differ from what it compares.
    written: dict[str, Any] = _written({"operator": "Equal", **toleration.model_dump(
        by_alias=True, exclude_none=True, mode="json")})
    return written


def _spread(constraint: TopologySpreadConstraint, market: Market) -> dict[str, Any]:
    written: dict[str, Any] = _written(constraint.model_dump(by_alias=True, exclude_none=True,
                                                            mode="json"))
    written.setdefault("labelSelector", {"matchLabels": selector(market)})
    return written


def _affinity(market: Market, anti_affinity: str) -> dict[str, Any]:
    term = {"labelSelector": {"matchLabels": selector(market)},
            "topologyKey": "kubernetes.io/hostname"}
    if anti_affinity == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}


def _environment(config: Config) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TRADEPLANE_NATS", "value": config.nats_url},
        {"name": "TRADEPLANE_HEALTH_PORT", "value": str(config.health_port)},
    ]
    if config.engine_credentials_secret:
        env.append({"name": "TRADEPLANE_CREDENTIALS", "value": CREDENTIALS_FILE})
    if config.engine_ca_secret or config.engine_ca_config_map:
        env.append({"name": "TRADEPLANE_NATS_CA", "value": CA_FILE})
    if config.engine_client_cert_secret:
        env.append({"name": "TRADEPLANE_NATS_CERT", "value": f"{CLIENT_TLS_DIR}/tls.crt"})
        env.append({"name": "TRADEPLANE_NATS_KEY", "value": f"{CLIENT_TLS_DIR}/tls.key"})
    if config.postgres_secret:
        env.append({"name": "TRADEPLANE_POSTGRES_DSN", "valueFrom": {"secretKeyRef": {
            "name": config.postgres_secret, "key": config.postgres_secret_key,
            "optional": True}}})
    return env


def _volumes(config: Config) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each volume with its mount: only the keys an engine needs, read-only.

    The credentials Secret holds every service's file (as ``tradeplane security init``
    writes them); an engine pod sees its own alone."""
    volumes: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if config.engine_credentials_secret:
        volumes.append(({"name": "nats-credentials", "secret": {
            "secretName": config.engine_credentials_secret, "defaultMode": SECRET_MODE,
            "items": [{"key": config.engine_credentials_key, "path": "engine.json"}]}},
            {"name": "nats-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True}))
    ca_items = [{"key": config.engine_ca_key, "path": "ca.crt"}]
    if config.engine_ca_secret:
        volumes.append(({"name": "nats-ca", "secret": {
            "secretName": config.engine_ca_secret, "defaultMode": SECRET_MODE,
            "items": ca_items}},
            {"name": "nats-ca", "mountPath": CA_DIR, "readOnly": True}))
    elif config.engine_ca_config_map:
        volumes.append(({"name": "nats-ca", "configMap": {
            "name": config.engine_ca_config_map, "defaultMode": PUBLIC_MODE,
            "items": ca_items}},
            {"name": "nats-ca", "mountPath": CA_DIR, "readOnly": True}))
    if config.engine_client_cert_secret:
        volumes.append(({"name": "nats-client-tls", "secret": {
            "secretName": config.engine_client_cert_secret, "defaultMode": SECRET_MODE,
            "items": [{"key": "tls.crt", "path": "tls.crt"},
                      {"key": "tls.key", "path": "tls.key"}]}},
            {"name": "nats-client-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": True}))
    return volumes


def statefulset(market: Market, config: Config) -> dict[str, Any]:
    spec = market.spec
    volumes = _volumes(config)
    probe = {"httpGet": {"path": "/readyz", "port": "health"}}
    where = placement(market, config)
    container: dict[str, Any] = {
        "name": "engine",
        "image": spec.engine.image or config.engine_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": ["engine", "--market", market.name, "--replica", "$(POD_NAME)",
                 "--stream-replicas", str(config.stream_replicas)],
        "env": _environment(config),
        "ports": [{"name": "health", "containerPort": config.health_port,
                   "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 2},
        "startupProbe": {**probe, "periodSeconds": STARTUP_PERIOD, "timeoutSeconds": 5,
                         "failureThreshold": STARTUP_FAILURES},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "health"},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "resources": (spec.engine.resources.model_dump(exclude_none=True, mode="json")
                      if spec.engine.resources else DEFAULT_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_PERIOD,
        "securityContext": {"runAsNonRoot": True, "runAsUser": POD_USER,
                            "runAsGroup": POD_USER, "fsGroup": POD_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "affinity": _affinity(market, where.anti_affinity),
        "containers": [container],
        # Lists are written even when empty: a merge patch of an empty list removes
        # what a Market no longer asks for, and a pod that has more is drift too.
        "volumes": [volume for volume, _ in volumes],
        "tolerations": [_toleration(toleration) for toleration in where.tolerations],
        "topologySpreadConstraints": [_spread(constraint, market)
                                      for constraint in where.spread],
        "imagePullSecrets": [{"name": name} for name in where.pull_secrets],
    }
    if where.node_selector:
        pod["nodeSelector"] = where.node_selector
    if where.priority_class:
        pod["priorityClassName"] = where.priority_class
    template_metadata: dict[str, Any] = {"labels": {**where.labels, **labels(market)}}
    if where.annotations:
        template_metadata["annotations"] = where.annotations
    container["volumeMounts"] = [mount for _, mount in volumes]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _metadata(market),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": market.engine_name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(market)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": template_metadata, "spec": pod},
        },
    }


def service(market: Market, config: Config) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(market),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(market),
            "ports": [{"name": "health", "port": config.health_port,
                       "targetPort": "health", "protocol": "TCP"}],
        },
    }


def disruption_budget(market: Market, config: Config) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _metadata(market),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(market)}},
    }


CHILDREN = (statefulset, service, disruption_budget)
"""Every child, in the order they are made (and the reverse of how they go)."""


OWNED_MAPS = (("nodeSelector",), ("affinity", "podAntiAffinity"))
OWNED_VALUES = ("priorityClassName",)
"""Pod fields the operator alone sets, which a merge patch removes only by ``null``: a
node label no longer asked for, the other kind of anti-affinity, a priority class."""


def removals(desired: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that removes from ``actual`` (a StatefulSet) what the operator set
    once and no longer does. Empty: nothing to remove.

    ``is_subset`` cannot see these (more is as good as enough to it), and lists need
    none of this: they are written whole, empty ones too."""
    want = desired["spec"]["template"]["spec"]
    have = ((actual.get("spec") or {}).get("template") or {}).get("spec") or {}
    stale: dict[str, Any] = {}
    for path in OWNED_MAPS:
        wanted, had = want, have
        for key in path:
            wanted, had = (wanted or {}).get(key), (had or {}).get(key)
        extra = set(had or {}) - set(wanted or {})
        if extra:
            place = stale
            for key in path[:-1]:
                place = place.setdefault(key, {})
            place[path[-1]] = dict.fromkeys(sorted(extra))
    for key in OWNED_VALUES:
        if have.get(key) is not None and key not in want:
            stale[key] = None
    return {"spec": {"template": {"spec": stale}}} if stale else {}


def is_subset(desired: Any, actual: Any) -> bool:
    """Does ``actual`` say at least what ``desired`` says?

    The API server adds defaults to what it stores (``dnsPolicy``, ``revisionHistoryLimit``
    ...), so a child is as it should be when every field the operator sets has its value;
    lists must match item by item. An empty list is as good as none: the API server
    stores none for it. Resource quantities compare by amount: the API server stores
    ``"1.5"`` as ``"1500m"``.
    """
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            _same_resources(value, actual.get(key)) if key == "resources" else
            is_subset(value, actual.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not desired and actual is None:
            return True
        return (isinstance(actual, list) and len(actual) == len(desired)
                and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True)))
    return bool(desired == actual)


def _same_resources(desired: Any, actual: Any) -> bool:
    """``is_subset`` for a container's ``resources``: quantities by amount."""
    if not isinstance(desired, dict) or not isinstance(actual, dict):
        return is_subset(desired, actual)
    for section, wanted in desired.items():
        stored = actual.get(section)
        if section not in ("requests", "limits") or not isinstance(wanted, dict):
            if not is_subset(wanted, stored):
                return False
        elif wanted and not (isinstance(stored, dict) and all(
                name in stored and quantity.same(amount, stored[name])
                for name, amount in wanted.items())):
            return False
    return True
