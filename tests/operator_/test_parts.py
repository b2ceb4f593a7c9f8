"""The operator's pure parts: status and conditions, children, error mapping, settings,
and what it writes on NATS checked against what the engines read."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import kopf
import msgspec
import pydantic
import pytest
import yaml

from tradeplane_engine.wire import decode_command, decode_definition, definition_from_manifest
from tradeplane_operator import handlers, images, protection, quantity
from tradeplane_operator.children import (
    STARTUP_FAILURES,
    STARTUP_PERIOD,
    Market,
    disruption_budget,
    is_subset,
    removals,
    service,
    statefulset,
)
from tradeplane_operator.config import (
    DELETION_PROTECTION_ANNOTATION,
    KOPF_PREFIX,
    PAUSE_ANNOTATION,
    PREFIX,
    SWITCHOVER_ANNOTATION,
    ZONE_SPREAD,
    Config,
)
from tradeplane_operator.crd import (
    CONDITION_REASON,
    MarketStatus,
    Toleration,
    TopologySpreadConstraint,
)
from tradeplane_operator.errors import (
    ImageNotAllowedError,
    InvalidMarketError,
    KubeError,
    RefusedError,
    RetryError,
    to_kopf,
)
from tradeplane_operator.exchange import Lease, ReplicaReport, admin_command
from tradeplane_operator.reconcile import check_image, definition
from tradeplane_operator.status import Observation, compute, condition, with_condition
from tradeplane_operator.storage import LAST_HANDLED_ANNOTATION, LEGACY_ANNOTATIONS

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"


def report(replica: str, **fields: Any) -> ReplicaReport:
    values: dict[str, Any] = {"replica": replica, "role": "standby", "epoch": 1, "ready": True,
                              "sequence": 10, "lag": 0, "mode": "open",
                              "published_through": 10, "failovers": 0,
                              "last_failover": None}
    values.update(fields)
    return ReplicaReport(**values)


def observe(reports: list[ReplicaReport], lease: Lease | None = None,
            previous: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    observation = Observation(**{"generation": 1, "replicas": 2, "mode": "open",
                                 "reports": reports, "lease": lease, **fields})
    return compute(observation, previous or {"observedGeneration": 1}, NOW).status


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


LEADING = Lease("a", 1)


@pytest.mark.parametrize(("reports", "lease", "extra", "phase", "expected"), [
    ([], None, {}, "Pending",
     {"Available": ("False", "NoLeader"), "Ready": ("False", "ReplicasNotReady"),
      "Progressing": ("True", "Converging"), "Degraded": ("False", "AsExpected")}),
    ([report("a", role="leader"), report("b")], LEADING, {}, "Running",
     {"Available": ("True", "LeaderServing"), "Ready": ("True", "AllReplicasReady"),
      "Progressing": ("False", "Stable"), "Degraded": ("False", "AsExpected")}),
    ([report("a", role="leader"), report("b", ready=False, lag=900)], LEADING, {}, "Degraded",
     {"Available": ("True", "LeaderServing"), "Ready": ("False", "ReplicasNotReady"),
      "Progressing": ("True", "Converging"), "Degraded": ("True", "ReplicasMissing")}),
    ([report("a"), report("b")], LEADING, {}, "Unavailable",
     {"Available": ("False", "NoLeader"), "Ready": ("False", "ReplicasNotReady"),
      "Progressing": ("True", "Converging"), "Degraded": ("True", "NoLeader")}),
    ([report("a", role="leader"), report("b")], LEADING, {"mode": "halted"}, "Running",
     {"Available": ("True", "LeaderServing"), "Ready": ("False", "ModePending"),
      "Progressing": ("True", "Converging"), "Degraded": ("False", "AsExpected")}),
    ([report("a", role="leader"), report("b")], LEADING, {"generation": 2}, "Running",
     {"Available": ("True", "LeaderServing"), "Ready": ("True", "AllReplicasReady"),
      "Progressing": ("True", "Reconciling"), "Degraded": ("False", "AsExpected")}),
    ([report("a", role="leader"), report("b")], LEADING, {"paused": True}, "Running",
     {"Available": ("True", "LeaderServing"), "Ready": ("True", "AllReplicasReady"),
      "Progressing": ("Unknown", "Paused"), "Degraded": ("False", "AsExpected")}),
    # A deposed leader's report (not the lease holder) does not count as the leader.
    ([report("a", role="leader"), report("b", role="leader", epoch=2)], Lease("b", 2), {},
     "Running", {"Available": ("True", "LeaderServing"), "Ready": ("True", "AllReplicasReady"),
                 "Progressing": ("False", "Stable"), "Degraded": ("False", "AsExpected")}),
    # Every replica gone after the market ran: not "Pending" as if it were new.
    ([], LEADING, {}, "Unavailable",
     {"Available": ("False", "NoLeader"), "Ready": ("False", "ReplicasNotReady"),
      "Progressing": ("True", "Converging"), "Degraded": ("True", "NoReplicas")}),
], ids=["nothing-yet", "serving", "standby-behind", "no-leader", "mode-pending",
        "new-generation", "paused", "deposed-report", "all-gone"])
def test_conditions(reports: list[ReplicaReport], lease: Lease | None, extra: dict[str, Any],
                    phase: str, expected: dict[str, tuple[str, str]]) -> None:
    previous = {"observedGeneration": 1, "lastLeader": "a"} if phase == "Unavailable" and (
        not reports) else None
    status = observe(reports, lease, previous, **extra)
    assert status["phase"] == phase
    assert conditions(status) == expected
    # metav1.Condition's shape, for the generation computed for; and every field of the
    # status is one the CRD lists (a real API server would drop any other).
    generation = extra.get("generation", 1)
    assert {c["observedGeneration"] for c in status["conditions"]} == {generation}
    MarketStatus.model_validate(stored(status))


def stored(status: Any) -> Any:
    """What a merge patch of ``status`` leaves stored: a ``None`` deletes its key."""
    if isinstance(status, dict):
        return {key: stored(value) for key, value in status.items() if value is not None}
    if isinstance(status, list):
        return [stored(item) for item in status]
    return status


def test_every_reason_is_a_metav1_reason() -> None:
    """Every reason the operator writes, in a condition or an Event, fits the pattern
    metav1.Condition gives reasons (the API server refuses a status that does not)."""
    import re
    source = "\n".join(path.read_text() for path in
                       (ROOT / "operator" / "tradeplane_operator").glob("*.py"))
    reasons = set(re.findall(r'\("(?:Normal|Warning)", "(\w+)"', source))
    reasons |= set(re.findall(r'reason = "(\w+)"', source))
    reasons |= set(re.findall(r'\("(\w+)", f?"', source))
    reasons |= set(re.findall(r'_REASON = "(\w+)"', source))
    reasons |= set(re.findall(r'reason="(\w+)"', source))
    reasons |= set(re.findall(r'condition\([^,]+, [^,]+, "(\w+)"', source))
    reasons |= set(re.findall(r'_refuse\(body, kube, "(\w+)"', source))
    reasons |= set(re.findall(r'"(\w+)" if isinstance', source))
    assert {"ImageNotAllowed", "NameTaken", "DeletionProtected", "Stable", "Retiring",
            "InvalidMarket", "ChildRefused", "Accepted", "Failover"} <= reasons
    assert [reason for reason in reasons if not re.fullmatch(CONDITION_REASON, reason)] == []


def test_the_status_reading_keeps_the_conditions_others_wrote() -> None:
    retiring = condition("Retiring", False, "DeletionProtected", "held", 1, [], NOW)
    accepted = condition("Accepted", True, "Accepted", "applied", 1, [], NOW)
    status = observe([report("a", role="leader"), report("b")], LEADING,
                     {"observedGeneration": 1, "conditions": [accepted, retiring]})
    assert [c["type"] for c in status["conditions"]] == [
        "Ready", "Available", "Progressing", "Degraded", "Accepted", "Retiring"]
    assert status["conditions"][-2:] == [accepted, retiring]
    MarketStatus.model_validate(stored(status))


@pytest.mark.parametrize(("before", "value", "reason", "moved"), [
    (None, True, "Accepted", True),
    (("True", "Accepted"), True, "Accepted", False),
    (("True", "Accepted"), False, "ImageNotAllowed", True),
    (("False", "ImageNotAllowed"), False, "NameTaken", False),  # only the status moves it
    (("False", "NameTaken"), None, "Unknown", True),
], ids=["new", "same", "turned-false", "other-reason", "unknown"])
def test_a_conditions_transition_time(before: tuple[str, str] | None, value: bool | None,
                                      reason: str, moved: bool) -> None:
    previous = [] if before is None else [{
        "type": "Accepted", "status": before[0], "reason": before[1], "message": "",
        "observedGeneration": 1, "lastTransitionTime": "2025-01-01T00:00:00Z"}]
    written = condition("Accepted", value, reason, "m" * 40000, 2, previous, NOW)
    assert written["lastTransitionTime"] == (NOW if moved else "2025-01-01T00:00:00Z")
    assert written["observedGeneration"] == 2
    assert len(written["message"]) == 32768  # metav1.Condition's longest
    assert with_condition(previous, written) == [written]
    assert with_condition([{"type": "Ready"}], written) == [{"type": "Ready"}, written]


QUANTITIES = [
    ("1.5", "1500m", True), ("1", 1, True), ("1Gi", "1073741824", True),
    ("1Gi", "1024Mi", True), ("0.5Gi", "512Mi", True), ("1e3", "1k", True),
    ("1E3", "1000", True), ("100m", "0.1", True), (".5", "500m", True), ("2", "2.0", True),
    ("1M", "1Mi", False), ("1k", "1Ki", False), ("1", "1m", False), ("+1", "1", True),
    ("-1", "1", False), ("1e-3", "1m", True), ("1n", "0.000000001", True),
]


@pytest.mark.parametrize(("first", "second", "equal"), QUANTITIES)
def test_quantities_compare_by_amount(first: Any, second: Any, equal: bool) -> None:
    assert quantity.same(first, second) is equal
    assert quantity.same(second, first) is equal


@pytest.mark.parametrize(("written", "amount"), [
    ("500m", Fraction(1, 2)), ("0.1", Fraction(1, 10)),
    ("1Ki", 1024), ("1.5Gi", 3 * 2 ** 29), ("1e2", 100), ("2E-1", Fraction(1, 5)),
    (3, 3), ("7u", Fraction(7, 10 ** 6)), ("1P", 10 ** 15), ("1Ei", 2 ** 60),
])
def test_a_quantity_is_parsed_exactly(written: Any, amount: Any) -> None:
    assert quantity.parse(written) == amount


@pytest.mark.parametrize("written", ["", "1 Gi", "1gi", "1KB", "lots", "1e", "1.2.3", True,
                                     1.5, None, "1e1.5"])
def test_what_is_not_a_quantity(written: Any) -> None:
    with pytest.raises(quantity.QuantityError):
        quantity.parse(written)


@pytest.mark.parametrize(("written", "canonical"), [
    ("1.5", "1500m"), ("1500m", "1500m"), ("1000m", "1"), (1, "1"), ("0.1", "100m"),
    ("1024Mi", "1Gi"), ("1536Mi", "1536Mi"), ("0.5Gi", "512Mi"), ("1073741824", "1073741824"),
    ("1e3", "1e3"), ("1000", "1k"), ("1500000", "1500k"), ("0", "0"), ("-1.5", "-1500m"),
])
def test_a_quantity_as_the_api_server_stores_it(written: Any, canonical: str) -> None:
    assert quantity.canonical(written) == canonical
    assert quantity.same(written, canonical)


def test_less_than_a_nano_is_stored_as_one() -> None:
    assert quantity.canonical("0.0000000001") == "1n"


@pytest.mark.parametrize(("written", "stored", "drift"), [
    ({"requests": {"cpu": "1.5", "memory": "1Gi"}},
     {"requests": {"cpu": "1500m", "memory": "1073741824"}}, False),
    ({"requests": {"cpu": 2}, "limits": {"cpu": "2000m"}},
     {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}, False),
    ({"requests": {"cpu": "1.5"}}, {"requests": {"cpu": "1"}}, True),
    ({"requests": {"cpu": "1", "memory": "1Gi"}}, {"requests": {"cpu": "1"}}, True),
    ({"limits": {"memory": "1Gi"}}, {"requests": {"memory": "1Gi"}}, True),
], ids=["canonical-forms", "numbers", "other-amount", "missing", "other-section"])
def test_resources_drift_by_amount_not_spelling(written: dict[str, Any],
                                                stored: dict[str, Any], drift: bool) -> None:
    desired = statefulset(market(engine={"resources": written}), Config())
    actual = msgspec.json.decode(msgspec.json.encode(desired))
    actual["spec"]["template"]["spec"]["containers"][0]["resources"] = stored
    assert is_subset(desired, actual) is not drift


@pytest.mark.parametrize(("allowed", "image", "ok"), [
    ((), None, True),  # the operator's own image
    ((), "ghcr.io/tradeplane/tradeplane:0.1.0", True),
    ((), "ghcr.io/tradeplane/tradeplane:0.2.0-rc.1", True),
    ((), "ghcr.io/tradeplane/tradeplane@sha256:" + "a" * 64, True),
    ((), "ghcr.io/tradeplane/tradeplane", True),
    ((), "ghcr.io/tradeplane/tradeplane-evil:0.1.0", False),
    ((), "ghcr.io/tradeplane/tradeplane/x:1", False),
    ((), "docker.io/library/busybox", False),
    ((), "busybox", False),
    (("registry.example.com/tradeplane/*",), "registry.example.com/tradeplane/engine:1", True),
    (("registry.example.com/tradeplane/*",), "registry.example.com/other/engine:1", False),
    (("registry.example.com/tradeplane/*",), "ghcr.io/tradeplane/tradeplane:0.2.0", False),
    (("*",), "docker.io/library/busybox", True),
], ids=lambda value: value if isinstance(value, str) else None)
def test_the_engine_image_policy(allowed: tuple[str, ...], image: str | None,
                                 ok: bool) -> None:
    config = Config(allowed_engine_images=allowed)
    assert images.allowed(image, config) is ok
    refused = market(engine={"image": image} if image else {})
    if ok:
        check_image(refused, config)
    else:
        with pytest.raises(ImageNotAllowedError, match="not allowed by the operator's image"):
            check_image(refused, config)
        assert ImageNotAllowedError.reason == "ImageNotAllowed"


@pytest.mark.parametrize(("image", "repository"), [
    ("ghcr.io/tradeplane/tradeplane:0.1.0", "ghcr.io/tradeplane/tradeplane"),
    ("localhost:5000/tp:1", "localhost:5000/tp"), ("localhost:5000/tp", "localhost:5000/tp"),
    ("tp@sha256:00", "tp"), ("tp:1@sha256:00", "tp"), ("tp", "tp"),
])
def test_an_images_repository(image: str, repository: str) -> None:
    assert images.repository(image) == repository


def test_a_condition_keeps_its_transition_time_until_it_changes() -> None:
    serving = [report("a", role="leader"), report("b")]
    first = compute(Observation(1, 2, "open", serving, LEADING), {"observedGeneration": 1},
                    "2026-01-01T00:00:00Z").status
    again = compute(Observation(1, 2, "open", serving, LEADING),
                    {**first, "observedGeneration": 1}, "2026-01-01T00:05:00Z").status
    assert [c["lastTransitionTime"] for c in again["conditions"]] == [
        "2026-01-01T00:00:00Z"] * 4
    lost = compute(Observation(1, 2, "open", [report("b")], LEADING),
                   {**again, "observedGeneration": 1}, "2026-01-01T00:06:00Z").status
    times = {c["type"]: c["lastTransitionTime"] for c in lost["conditions"]}
    assert times["Available"] == "2026-01-01T00:06:00Z"


def test_a_failover_is_reported_once_with_both_leaders() -> None:
    before = observe([report("a", role="leader"), report("b")], LEADING)
    assert before["epoch"] == 1
    # The lease moved but b has not said so yet: no leader, the epoch waits.
    gap = compute(Observation(1, 2, "open", [report("a", role="leader"), report("b")],
                              Lease("b", 2)), before, NOW)
    assert gap.status["leader"] is None
    assert gap.status["lastLeader"] == "a"
    assert gap.status["epoch"] == 1
    assert gap.leader_change is None
    after = compute(Observation(1, 2, "open", [report("b", role="leader", epoch=2,
                                                      last_failover=1_700_000_000 * 10**9)],
                                Lease("b", 2)), gap.status, NOW)
    assert after.leader_change is not None
    kind, reason, message = after.leader_change
    assert (kind, reason) == ("Warning", "Failover")
    assert "from a to b" in message
    assert after.status["failovers"] == 1
    assert after.status["lastFailoverTime"] == "2023-11-14T22:13:20Z"
    assert after.status["replicaLag"] == {"a": None, "b": 0}  # a's entry is removed
    steady = compute(Observation(1, 2, "open", [report("b", role="leader", epoch=2)],
                                 Lease("b", 2)), after.status, NOW)
    assert steady.leader_change is None
    planned = compute(Observation(1, 2, "open", [report("a", role="leader", epoch=3)],
                                  Lease("a", 3, taken="handover")), steady.status, NOW)
    assert planned.leader_change is not None
    assert planned.leader_change[:2] == ("Normal", "Switchover")
    assert planned.status["failovers"] == 1
    assert planned.status["switchovers"] == 1


def test_what_the_operator_writes_is_what_the_engines_read() -> None:
    for path in sorted((ROOT / "examples" / "markets").glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": "default",
                                         "uid": "u"}}
        written = msgspec.json.encode(definition(Market.from_body(body)))
        expected = msgspec.structs.replace(definition_from_manifest(manifest),
                                           fees={"makerBps": 0, "takerBps": 0})
        assert decode_definition(written) == expected, path.name
    # A placed Market's definition still decodes: the pod template rides along.
    placed = market(engine={"template": {"pod": {"nodeSelector": {"pool": "exchange"},
                                                 "tolerations": [{"operator": "Exists"}]}}})
    placed_definition = decode_definition(msgspec.json.encode(definition(placed)))
    assert placed_definition.engine == {"template": {"pod": {
        "nodeSelector": {"pool": "exchange"}, "tolerations": [{"operator": "Exists"}]}}}
    for command in ({"type": "setTradingMode", "mode": "cancelOnly"},
                    {"type": "cancelAll", "account": None}):
        decoded = decode_command(admin_command(command), 7, 99)
        assert decoded.sequence == 7
        assert msgspec.to_builtins(decoded)["type"] == command["type"]
    assert decode_command(admin_command({"type": "setTradingMode", "mode": "halted"}),
                          1, 1).mode == "halted"  # type: ignore[union-attr]
    # The names the operator writes to are the engine's (it imports no engine code).
    from tradeplane_engine import wire
    from tradeplane_operator import exchange

    assert exchange.command_stream("btc-usdt") == wire.command_stream("btc-usdt")
    assert exchange.command_subject("btc-usdt") == wire.command_subject("btc-usdt")
    assert exchange.engine_subject("btc-usdt", "status") == wire.engine_subject(
        "btc-usdt", "status")
    assert exchange.recorder_subject("btc-usdt", "snapshot") == wire.recorder_subject(
        "btc-usdt", "snapshot")
    assert exchange.MARKETS_BUCKET == wire.MARKETS_BUCKET
    assert exchange.bucket_stream("tp-replicas") == wire.bucket_stream("tp-replicas")
    assert exchange.bucket_key_prefix("tp-replicas") == wire.bucket_key_prefix("tp-replicas")
    assert (exchange.LEASES_BUCKET, exchange.REPLICAS_BUCKET) == (wire.LEASES_BUCKET,
                                                                  wire.REPLICAS_BUCKET)


def market(**spec: Any) -> Market:
    return Market.from_body({
        "metadata": {"name": "btc-usdt", "namespace": "prod", "uid": "u1"},
        "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1", "lotSize": "0.001",
                 **spec}})


def test_children_follow_the_settings() -> None:
    config = Config(anti_affinity="required", postgres_secret="pg", stream_replicas=3,
                    engine_image="tp:1")
    sts = statefulset(market(replicas=3, engine={"image": "tp:custom"}), config)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "tp:custom"
    assert container["args"][-2:] == ["--stream-replicas", "3"]
    assert {"name": "TRADEPLANE_POSTGRES_DSN", "valueFrom": {"secretKeyRef": {
        "name": "pg", "key": "dsn", "optional": True}}} in container["env"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"][
        "podAntiAffinity"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert sts["spec"]["replicas"] == 3
    assert statefulset(market(), Config(engine_image="tp:1"))["spec"]["template"]["spec"][
        "containers"][0]["image"] == "tp:1"
    assert disruption_budget(market(), config)["spec"]["maxUnavailable"] == 1


def test_what_the_api_server_adds_is_not_drift() -> None:
    desired = statefulset(market(), Config())
    stored = msgspec.json.decode(msgspec.json.encode(desired))
    stored["spec"]["revisionHistoryLimit"] = 10
    stored["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert is_subset(desired, stored)
    stored["spec"]["replicas"] = 1
    assert not is_subset(desired, stored)


SECURED = Config(engine_credentials_secret="tradeplane-nats", engine_ca_config_map="nats-ca",
                 engine_client_cert_secret="engine-tls", postgres_secret="pg")


def _engine_pod(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = statefulset(market(), config)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_engines_mount_their_own_credentials_and_the_tls_files() -> None:
    """The credentials Secret holds every service's file; an engine pod mounts the
    engine's key alone, read-only, readable by its group only, and the environment
    names files, never a secret."""
    pod, container = _engine_pod(SECURED)
    env = {item["name"]: item for item in container["env"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(mounts) == set(volumes) == {"nats-credentials", "nats-ca", "nats-client-tls"}
    assert all(mount["readOnly"] for mount in mounts.values())

    files = {}
    for name, volume in volumes.items():
        source = volume.get("secret") or volume["configMap"]
        for item in source["items"]:
            files[f"{mounts[name]['mountPath']}/{item['path']}"] = (
                source.get("secretName") or source["name"], item["key"],
                source["defaultMode"])
    assert files[env["TRADEPLANE_CREDENTIALS"]["value"]] == (
        "tradeplane-nats", "engine.json", 0o440)
    assert [key for secret, key, _ in files.values() if secret == "tradeplane-nats"] == [
        "engine.json"]
    assert files[env["TRADEPLANE_NATS_CA"]["value"]] == ("nats-ca", "ca.crt", 0o444)
    assert files[env["TRADEPLANE_NATS_CERT"]["value"]] == ("engine-tls", "tls.crt", 0o440)
    assert files[env["TRADEPLANE_NATS_KEY"]["value"]] == ("engine-tls", "tls.key", 0o440)
    # The files' group is the pod's, the one its user runs as.
    security = pod["securityContext"]
    assert security["fsGroup"] == security["runAsGroup"] == 10001
    assert {"name": "TRADEPLANE_NATS", "value": "nats://nats:4222"} in container["env"]
    assert not [item for item in container["env"]
                if "value" in item and "password" in item["value"].lower()]


def test_a_ca_from_a_secret_and_a_key_of_another_name() -> None:
    pod, container = _engine_pod(Config(engine_credentials_secret="creds",
                                        engine_credentials_key="engine-v2.json",
                                        engine_ca_secret="nats-ca", engine_ca_key="bundle"))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["nats-credentials"]["secret"]["items"] == [
        {"key": "engine-v2.json", "path": "engine.json"}]
    assert volumes["nats-ca"]["secret"] == {"secretName": "nats-ca", "defaultMode": 0o440,
                                           "items": [{"key": "bundle", "path": "ca.crt"}]}
    names = [item["name"] for item in container["env"]]
    assert "TRADEPLANE_NATS_CERT" not in names
    assert "nats-client-tls" not in volumes


def test_without_credentials_an_engine_mounts_nothing() -> None:
    pod, container = _engine_pod(Config())
    assert pod["volumes"] == container["volumeMounts"] == []
    assert {item["name"] for item in container["env"]}.isdisjoint(
        {"TRADEPLANE_CREDENTIALS", "TRADEPLANE_NATS_CA", "TRADEPLANE_NATS_CERT"})


def _stored(desired: dict[str, Any]) -> dict[str, Any]:
    """What a real API server gives back: defaults added, empty lists dropped."""
    stored: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(desired))
    pod = stored["spec"]["template"]["spec"]
    for owner, key in ((pod, "volumes"), (pod["containers"][0], "volumeMounts")):
        if not owner[key]:
            del owner[key]
    pod["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    for mount in pod["containers"][0].get("volumeMounts", []):
        mount.setdefault("mountPropagation", "None")
    return stored


def _pod_spec(sts: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = sts["spec"]["template"]["spec"]
    return spec


def _without_volumes(sts: dict[str, Any]) -> None:
    _pod_spec(sts).pop("volumes", None)
    _pod_spec(sts)["containers"][0].pop("volumeMounts", None)


def _another_key(sts: dict[str, Any]) -> None:
    _pod_spec(sts)["volumes"][0]["secret"]["items"] = [{"key": "gateway.json",
                                                        "path": "engine.json"}]


def _readable_by_all(sts: dict[str, Any]) -> None:
    _pod_spec(sts)["volumes"][0]["secret"]["defaultMode"] = 0o444


def _older_operators(sts: dict[str, Any]) -> None:
    """A StatefulSet an operator made before credentials: no volumes, no fsGroup."""
    _without_volumes(sts)
    del _pod_spec(sts)["securityContext"]["fsGroup"]
    env = _pod_spec(sts)["containers"][0]["env"]
    env[:] = [item for item in env if not item["name"].startswith(
        ("TRADEPLANE_CREDENTIALS", "TRADEPLANE_NATS_"))]


def _added_volume(sts: dict[str, Any]) -> None:
    _pod_spec(sts)["volumes"] = [{"name": "nats-credentials", "secret": {
        "secretName": "tradeplane-nats", "defaultMode": 0o440,
        "items": [{"key": "admin.json", "path": "engine.json"}]}}]


@pytest.mark.parametrize(("config", "edit", "drift"), [
    (SECURED, None, False),
    (Config(), None, False),
    (SECURED, _without_volumes, True),
    (SECURED, _another_key, True),
    (SECURED, _readable_by_all, True),
    (SECURED, _older_operators, True),
    (Config(), _added_volume, True),
], ids=["secured as stored", "plain as stored", "volumes removed", "another service's key",
        "readable by all", "made by an older operator", "a volume added by hand"])
def test_drift_of_the_engines_credentials(config: Config, edit: Any, drift: bool) -> None:
    desired = statefulset(market(), config)
    stored = _stored(desired)
    if edit is not None:
        edit(stored)
    assert is_subset(desired, stored) is not drift


SELECTOR = {"app.kubernetes.io/component": "engine", "tradeplane.dev/market": "btc-usdt"}
ZONE = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": SELECTOR}}
GPU = Toleration(key="dedicated", operator="Equal", value="exchange", effect="NoSchedule")
FLEET = Config(engine_node_selector={"pool": "exchange"}, engine_tolerations=(GPU,),
               engine_priority_class="exchange-critical",
               engine_image_pull_secrets=("regcred",))


def _anti_affinity(pod: dict[str, Any]) -> str:
    [kind] = pod["affinity"]["podAntiAffinity"]
    return "required" if kind.startswith("required") else "preferred"


@pytest.mark.parametrize(("config", "template", "expected"), [
    (Config(), None,
     {"antiAffinity": "required", "nodeSelector": None, "tolerations": [],
      "topologySpreadConstraints": [ZONE], "priorityClassName": None,
      "imagePullSecrets": []}),
    (Config(anti_affinity="preferred"), None, {"antiAffinity": "preferred"}),
    (Config(), {"antiAffinity": "preferred"}, {"antiAffinity": "preferred"}),
    (Config(anti_affinity="preferred"), {"antiAffinity": "required"},
     {"antiAffinity": "required"}),
    (FLEET, None,
     {"nodeSelector": {"pool": "exchange"}, "priorityClassName": "exchange-critical",
      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "exchange",
                       "effect": "NoSchedule"}],
      "imagePullSecrets": [{"name": "regcred"}], "topologySpreadConstraints": [ZONE]}),
    # Field by field: what the Market gives replaces the default; the rest stays.
    (FLEET, {"nodeSelector": {"pool": "btc"}, "imagePullSecrets": [{"name": "mine"}]},
     {"nodeSelector": {"pool": "btc"}, "imagePullSecrets": [{"name": "mine"}],
      "priorityClassName": "exchange-critical", "tolerations": [{
          "key": "dedicated", "operator": "Equal", "value": "exchange",
          "effect": "NoSchedule"}]}),
    # An empty list replaces the default with none.
    (FLEET, {"tolerations": [], "topologySpreadConstraints": []},
     {"tolerations": [], "topologySpreadConstraints": [], "nodeSelector": {"pool": "exchange"}}),
    # An empty map or name likewise.
    (FLEET, {"nodeSelector": {}, "priorityClassName": "", "imagePullSecrets": []},
     {"nodeSelector": None, "priorityClassName": None, "imagePullSecrets": [],
      "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "exchange",
                       "effect": "NoSchedule"}]}),
    # An omitted operator is written as Kubernetes reads it; Exists without key or value.
    (Config(), {"tolerations": [{"key": "spot"}, {"operator": "Exists"},
                                {"key": "lost", "operator": "Exists", "effect": "NoExecute",
                                 "tolerationSeconds": 30}]},
     {"tolerations": [{"key": "spot", "operator": "Equal"}, {"operator": "Exists"},
                      {"key": "lost", "operator": "Exists", "effect": "NoExecute",
                       "tolerationSeconds": 30}]}),
    # A constraint without a selector counts the market's engines; one with keeps its own.
    (Config(), {"topologySpreadConstraints": [
        {"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
         "minDomains": 2},
        {"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 2,
         "labelSelector": {"matchLabels": {"tier": "exchange"}}}]},
     {"topologySpreadConstraints": [
         {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "minDomains": 2,
          "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": SELECTOR}},
         {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
          "whenUnsatisfiable": "ScheduleAnyway",
          "labelSelector": {"matchLabels": {"tier": "exchange"}}}]}),
    (Config(engine_topology_spread=()), {"priorityClassName": "market-critical"},
     {"topologySpreadConstraints": [], "priorityClassName": "market-critical"}),
], ids=["defaults", "preferred by the operator", "preferred by the market",
        "required by the market", "the operator's placement", "field by field",
        "empty lists replace", "empty map and name replace", "tolerations as stored",
        "spread selectors", "no default spread"])
def test_placement_from_the_settings_and_the_market(
        config: Config, template: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    engine = {"template": {"pod": template}} if template is not None else {}
    pod = statefulset(market(engine=engine), config)["spec"]["template"]["spec"]
    found = {"antiAffinity": _anti_affinity(pod), **{
        key: pod.get(key) for key in ("nodeSelector", "tolerations",
                                      "topologySpreadConstraints", "priorityClassName",
                                      "imagePullSecrets")}}
    assert {key: found[key] for key in expected} == expected


def test_the_anti_affinity_term_selects_the_markets_engines() -> None:
    sts = statefulset(market(), Config())
    [term] = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": SELECTOR},
                    "topologyKey": "kubernetes.io/hostname"}
    assert sts["spec"]["selector"]["matchLabels"] == SELECTOR


def test_pod_metadata_adds_to_the_operators_labels_and_never_replaces_them() -> None:
    sts = statefulset(market(engine={"template": {"pod": {"metadata": {
        "labels": {"team": "exchange", "tradeplane.dev/market": "other",
                   "app.kubernetes.io/component": "db"},
        "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}}}}}),
        Config())
    metadata = sts["spec"]["template"]["metadata"]
    assert metadata["labels"]["team"] == "exchange"
    assert metadata["labels"].items() >= SELECTOR.items()  # the selector still selects
    assert metadata["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict":
                                       "false"}
    assert "annotations" not in statefulset(market(), Config())["spec"]["template"]["metadata"]


def test_the_startup_probe_gives_a_replay_time_before_liveness_counts() -> None:
    container = statefulset(market(), Config())["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "health"}
    assert startup["periodSeconds"] * startup["failureThreshold"] == STARTUP_PERIOD * (
        STARTUP_FAILURES) == 600
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


@pytest.mark.parametrize(("resources", "qos"), [
    (None, "Burstable"),
    ({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
     "Guaranteed"),
    ({"limits": {"cpu": "2", "memory": "4Gi"}}, "Guaranteed"),  # requests default to limits
    ({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}, "Burstable"),
], ids=["default", "requests equal limits", "limits alone", "no cpu limit"])
def test_resources_are_passed_through_so_guaranteed_qos_is_possible(
        resources: dict[str, Any] | None, qos: str) -> None:
    engine = {"resources": resources} if resources else {}
    container = statefulset(market(engine=engine), Config())["spec"]["template"]["spec"][
        "containers"][0]
    if resources:
        assert container["resources"] == resources  # untouched
    assert _qos_class(container["resources"]) == qos


def _qos_class(resources: dict[str, Any]) -> str:
    """The QoS class Kubernetes gives a one-container pod (requests default to limits)."""
    limits = resources.get("limits", {})
    requests = {**limits, **resources.get("requests", {})}
    if all(limits.get(kind) is not None and requests.get(kind) == limits[kind]
           for kind in ("cpu", "memory")):
        return "Guaranteed"
    return "Burstable" if requests or limits else "BestEffort"


def _as_stored(desired: dict[str, Any]) -> dict[str, Any]:
    """What a real API server stores of a StatefulSet: empty lists left out (omitempty),
    defaults added to the pod template and its probes."""
    stored = _stored(desired)
    pod = stored["spec"]["template"]["spec"]
    for key in ("tolerations", "topologySpreadConstraints", "imagePullSecrets"):
        if not pod[key]:
            del pod[key]
    pod.update({"dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                "schedulerName": "default-scheduler"})
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        pod["containers"][0][probe]["httpGet"]["scheme"] = "HTTP"
        pod["containers"][0][probe].setdefault("successThreshold", 1)
    return stored


PLACED = {"nodeSelector": {"pool": "btc"}, "priorityClassName": "market-critical",
          "tolerations": [{"key": "spot"}, {"operator": "Exists", "effect": "NoExecute",
                                            "tolerationSeconds": 60}],
          "topologySpreadConstraints": [{"topologyKey": "kubernetes.io/hostname"}],
          "imagePullSecrets": [{"name": "regcred"}],
          "metadata": {"labels": {"team": "exchange"}, "annotations": {"a": "b"}}}


@pytest.mark.parametrize(("before", "after", "drift", "removed"), [
    (PLACED, PLACED, False, {}),
    (None, None, False, {}),
    (PLACED, None, True, {"nodeSelector": {"pool": None}, "priorityClassName": None}),
    (None, PLACED, True, {}),
    (PLACED, {**PLACED, "tolerations": []}, True, {}),
    (PLACED, {**PLACED, "nodeSelector": {"pool": "btc", "disk": "ssd"}}, True, {}),
    (PLACED, {**PLACED, "nodeSelector": {"disk": "ssd"}}, True,
     {"nodeSelector": {"pool": None}}),
    (PLACED, {**PLACED, "antiAffinity": "preferred"}, True,
     {"affinity": {"podAntiAffinity": {
         "requiredDuringSchedulingIgnoredDuringExecution": None}}}),
], ids=["placed as stored", "defaults as stored", "placement dropped", "placement added",
        "tolerations emptied", "a node label added", "a node label replaced",
        "anti-affinity relaxed"])
def test_placement_drift_as_a_real_api_server_stores_it(
        before: dict[str, Any] | None, after: dict[str, Any] | None, drift: bool,
        removed: dict[str, Any]) -> None:
    """The operator's check compares what it writes with what the API server gives back:
    as stored, nothing is drift (no patch forever); a changed Market is, and what it no
    longer asks for goes (lists written empty, map keys and values as ``null``)."""
    def built(template: dict[str, Any] | None) -> dict[str, Any]:
        return statefulset(market(engine={"template": {"pod": template}} if template else {}),
                           Config())

    stored = _as_stored(built(before))
    desired = built(after)
    assert is_subset(desired, stored) is not drift
    patch = removals(desired, stored)
    assert patch == ({"spec": {"template": {"spec": removed}}} if removed else {})


def test_placement_settings_from_the_environment() -> None:
    config = Config.from_environment({
        "TRADEPLANE_ENGINE_NODE_SELECTOR": '{"pool": "exchange"}',
        "TRADEPLANE_ENGINE_TOLERATIONS": '[{"key": "dedicated", "operator": "Equal", '
                                         '"value": "exchange", "effect": "NoSchedule"}]',
        "TRADEPLANE_ENGINE_TOPOLOGY_SPREAD": '[{"maxSkew": 1, "topologyKey": '
                                             '"kubernetes.io/hostname", '
                                             '"whenUnsatisfiable": "DoNotSchedule"}]',
        "TRADEPLANE_ENGINE_PRIORITY_CLASS": "exchange-critical",
        "TRADEPLANE_ENGINE_IMAGE_PULL_SECRETS": '[{"name": "regcred"}]'})
    assert config.engine_node_selector == {"pool": "exchange"}
    assert config.engine_tolerations == (GPU,)
    assert config.engine_topology_spread == (TopologySpreadConstraint(
        topology_key="kubernetes.io/hostname", when_unsatisfiable="DoNotSchedule"),)
    assert config.engine_priority_class == "exchange-critical"
    assert config.engine_image_pull_secrets == ("regcred",)
    defaults = Config.from_environment({"TRADEPLANE_ENGINE_TOPOLOGY_SPREAD": "",
                                        "TRADEPLANE_ANTI_AFFINITY": ""})
    assert defaults.engine_topology_spread == (ZONE_SPREAD,)
    assert defaults.anti_affinity == "required"
    assert Config.from_environment({"TRADEPLANE_ENGINE_TOPOLOGY_SPREAD": "[]"}
                                   ).engine_topology_spread == ()


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TRADEPLANE_ENGINE_NODE_SELECTOR", "pool=exchange", "TRADEPLANE_ENGINE_NODE_SELECTOR is "
     "not JSON"),
    ("TRADEPLANE_ENGINE_NODE_SELECTOR", '{"pool": 1}', "TRADEPLANE_ENGINE_NODE_SELECTOR: pool"),
    ("TRADEPLANE_ENGINE_TOLERATIONS", '[{"key": "a", "operator": "Is"}]',
     "TRADEPLANE_ENGINE_TOLERATIONS: 0.operator"),
    ("TRADEPLANE_ENGINE_TOLERATIONS", '[{"effect": "NoSchedule"}]',
     "without a key must have operator Exists"),
    ("TRADEPLANE_ENGINE_TOLERATIONS", '[{"key": "a", "tolerationSeconds": 5}]',
     "NoExecute only"),
    ("TRADEPLANE_ENGINE_TOLERATIONS", '{"key": "a"}', "TRADEPLANE_ENGINE_TOLERATIONS: the "
     "value"),
    ("TRADEPLANE_ENGINE_TOPOLOGY_SPREAD", '[{"maxSkew": 1}]',
     "TRADEPLANE_ENGINE_TOPOLOGY_SPREAD: 0.topologyKey"),
    ("TRADEPLANE_ENGINE_TOPOLOGY_SPREAD", '[{"topologyKey": "zone", "minDomains": 2}]',
     "DoNotSchedule only"),
    ("TRADEPLANE_ENGINE_IMAGE_PULL_SECRETS", '["regcred"]',
     "TRADEPLANE_ENGINE_IMAGE_PULL_SECRETS: 0"),
    ("TRADEPLANE_ENGINE_IMAGE_PULL_SECRETS", '[{"name": "Reg_Cred"}]', "0.name"),
    ("TRADEPLANE_ENGINE_PRIORITY_CLASS", "High Priority", "no Kubernetes object name"),
    ("TRADEPLANE_ANTI_AFFINITY", "sometimes", "anti-affinity"),
], ids=["selector not JSON", "selector value a number", "toleration operator",
        "toleration without key", "seconds without NoExecute", "tolerations not a list",
        "spread without key", "minDomains preferred", "pull secrets as names",
        "pull secret name", "priority class name", "anti-affinity"])
def test_wrong_placement_settings_say_which_and_why(variable: str, value: str,
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.from_environment({variable: value})


def _essence(annotations: dict[str, str]) -> dict[str, Any]:
    """What kopf compares to decide whether a Market changed (the operator's storages)."""
    persistence = handlers.settings().persistence
    body = kopf.Body({"apiVersion": "tradeplane.dev/v1alpha1", "kind": "Market",
                      "metadata": {"name": "sol-usdt", "annotations": annotations},
                      "spec": {"replicas": 2}})
    essence = persistence.diffbase_storage.build(body=body)
    return dict(persistence.progress_storage.clear(essence=essence))


@pytest.mark.parametrize("legacy", [False, True], ids=["kopf's state", "an older operator's"])
def test_the_users_annotations_are_changes_and_kopfs_own_are_not(legacy: bool) -> None:
    """kopf drops every annotation under its storage prefix from what it compares, so
    its prefix must not be the one the switchover and pause annotations use."""
    user = {PAUSE_ANNOTATION: "true", SWITCHOVER_ANNOTATION: "sol-usdt-engine-1"}
    state = {LAST_HANDLED_ANNOTATION: "{}", f"{KOPF_PREFIX}/kopf-managed": "yes",
             f"{KOPF_PREFIX}/apply": "{}"}
    if legacy:
        state |= dict.fromkeys(LEGACY_ANNOTATIONS, "yes")
    assert _essence(user | state) == {"spec": {"replicas": 2},
                                      "metadata": {"annotations": user}}
    assert _essence(state) == {"spec": {"replicas": 2}}


def test_storing_a_configuration_removes_an_older_operators_state() -> None:
    present = {f"{PREFIX}/kopf-managed": "yes", f"{PREFIX}/last-handled-configuration": "{}",
               PAUSE_ANNOTATION: "true"}
    body = kopf.Body({"metadata": {"name": "sol-usdt", "annotations": present}})
    patch = kopf.Patch()
    handlers.settings().persistence.diffbase_storage.store(
        body=body, patch=patch, essence=kopf.BodyEssence(spec={"replicas": 2}))
    assert dict(patch["metadata"]["annotations"]) == {
        f"{PREFIX}/kopf-managed": None, f"{PREFIX}/last-handled-configuration": None,
        LAST_HANDLED_ANNOTATION: '{"spec":{"replicas":2}}\n',
        f"{KOPF_PREFIX}/kopf-managed": "yes"}


def test_settings_from_the_environment() -> None:
    config = Config.from_environment({
        "TRADEPLANE_NATS": "nats://n:4222", "TRADEPLANE_ENGINE_IMAGE": "tp:9",
        "TRADEPLANE_POSTGRES_SECRET": "db", "TRADEPLANE_STREAM_REPLICAS": "3",
        "TRADEPLANE_ANTI_AFFINITY": "required", "TRADEPLANE_NAMESPACES": "a,b"})
    assert (config.nats_url, config.engine_image, config.postgres_secret) == (
        "nats://n:4222", "tp:9", "db")
    assert config.stream_replicas == 3
    assert config.namespaces == ("a", "b")
    assert config.allowed_engine_images == ()
    assert Config.from_environment({
        "TRADEPLANE_ALLOWED_ENGINE_IMAGES": "r.example/tp:*, r.example/tp@*,"
    }).allowed_engine_images == ("r.example/tp:*", "r.example/tp@*")
    with pytest.raises(ValueError, match="anti-affinity"):
        Config(anti_affinity="sometimes")
    with pytest.raises(ValueError, match="stream replicas"):
        Config(stream_replicas=2)


def test_leader_election_settings_from_the_environment() -> None:
    config = Config.from_environment({
        "TRADEPLANE_POD_NAME": "tp-tradeplane-operator-7d9f-x2x4q",
        "TRADEPLANE_LEASE_NAMESPACE": "exchange", "TRADEPLANE_LEASE_NAME": "tp-operator",
        "TRADEPLANE_LEASE_DURATION": "20", "TRADEPLANE_RENEW_DEADLINE": "12",
        "TRADEPLANE_RETRY_PERIOD": "3"})
    assert (config.identity, config.lease_namespace, config.lease_name) == (
        "tp-tradeplane-operator-7d9f-x2x4q", "exchange", "tp-operator")
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (
        20.0, 12.0, 3.0)
    assert config.leader_election
    assert not Config.from_environment({"TRADEPLANE_LEADER_ELECTION": "false"}).leader_election
    defaults = Config.from_environment({})
    assert (defaults.lease_namespace, defaults.lease_duration, defaults.renew_deadline,
            defaults.retry_period) == ("default", 15.0, 10.0, 2.0)
    assert defaults.identity != Config.from_environment({}).identity  # random without a pod
    with pytest.raises(ValueError, match="renew deadline"):
        Config(lease_duration=10, renew_deadline=10)  # the leader must stop first


def test_nats_security_settings_from_the_environment() -> None:
    config = Config.from_environment({
        "TRADEPLANE_CREDENTIALS": "/etc/tradeplane/credentials/operator.json",
        "TRADEPLANE_NATS_CA": "/ca/ca.crt", "TRADEPLANE_NATS_CERT": "/tls/tls.crt",
        "TRADEPLANE_NATS_KEY": "/tls/tls.key",
        "TRADEPLANE_ENGINE_CREDENTIALS_SECRET": "tradeplane-nats",
        "TRADEPLANE_ENGINE_NATS_CA_CONFIGMAP": "nats-ca",
        "TRADEPLANE_ENGINE_NATS_CLIENT_CERT_SECRET": "engine-tls"})
    assert (config.nats_credentials, config.nats_ca, config.nats_cert, config.nats_key) == (
        "/etc/tradeplane/credentials/operator.json", "/ca/ca.crt", "/tls/tls.crt",
        "/tls/tls.key")
    assert (config.engine_credentials_secret, config.engine_credentials_key) == (
        "tradeplane-nats", "engine.json")
    assert (config.engine_ca_secret, config.engine_ca_config_map, config.engine_ca_key) == (
        None, "nats-ca", "ca.crt")
    assert config.engine_client_cert_secret == "engine-tls"
    empty = Config.from_environment({"TRADEPLANE_ENGINE_CREDENTIALS_SECRET": "",
                                     "TRADEPLANE_ENGINE_CREDENTIALS_KEY": ""})
    assert (empty.engine_credentials_secret, empty.engine_credentials_key) == (
        None, "engine.json")
    with pytest.raises(ValueError, match="not both"):
        Config(engine_ca_secret="a", engine_ca_config_map="b")
    with pytest.raises(ValueError, match="key without"):
        Config(nats_key="/tls/tls.key")


def _validation_error() -> pydantic.ValidationError:
    try:
        market(tickSize=1)
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("a number for tickSize was accepted")


@pytest.mark.parametrize(("error", "kind", "delay"), [
    (RetryError("waiting", delay=1), kopf.TemporaryError, 1),
    (InvalidMarketError("taken"), kopf.PermanentError, None),
    (KubeError(422, "Invalid", "bad"), kopf.PermanentError, None),
    (KubeError(400, "BadRequest", "bad"), kopf.PermanentError, None),
    (KubeError(403, "Forbidden", "rbac"), kopf.TemporaryError, 30),
    (KubeError(409, "Conflict", "race"), kopf.TemporaryError, 1),
    (KubeError(500, "InternalError", "x"), kopf.TemporaryError, 5),
    (KubeError(429, "TooManyRequests", "x"), kopf.TemporaryError, 5),
    (RefusedError("no"), kopf.TemporaryError, 5),
    (ConnectionRefusedError(), kopf.TemporaryError, 5),
    (TimeoutError(), kopf.TemporaryError, 5),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value))
def test_errors_map_to_kopf(error: Exception, kind: type[Exception], delay: float | None) -> None:
    mapped = to_kopf(error)
    assert isinstance(mapped, kind)
    if delay is not None:
        assert isinstance(mapped, kopf.TemporaryError)
        assert mapped.delay == delay


def test_an_invalid_spec_is_permanent_and_a_bug_is_not_swallowed() -> None:
    assert isinstance(to_kopf(_validation_error()), kopf.PermanentError)
    assert to_kopf(KeyError("a bug")) is None


def test_timestamps_are_rfc3339_utc() -> None:
    from tradeplane_operator.status import timestamp

    assert timestamp(0) == "1970-01-01T00:00:00Z"
    now = datetime.datetime.strptime(timestamp(), "%Y-%m-%dT%H:%M:%SZ")
    assert now.year >= 2026


@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_the_children_are_valid_kubernetes_objects(version: str) -> None:
    """Strict schemas (no unknown field anywhere) of the oldest and newest Kubernetes the
    chart supports: the emulator stores anything, so this is where typos are caught."""
    import kubernetes_validate

    config = Config(postgres_secret="pg", anti_affinity="required")
    built = market(replicas=3, engine={"resources": {"requests": {"cpu": "1"}}})
    for build in (statefulset, service, disruption_budget):
        kubernetes_validate.validate(build(built, config), version, strict=True)
    kubernetes_validate.validate(statefulset(built, Config()), version, strict=True)
    for secured in (SECURED, Config(engine_credentials_secret="c", engine_ca_secret="ca")):
        kubernetes_validate.validate(statefulset(built, secured), version, strict=True)
    placed = market(engine={"template": {"pod": PLACED}})
    for config in (Config(), FLEET, Config(anti_affinity="preferred")):
        kubernetes_validate.validate(statefulset(placed, config), version, strict=True)
        kubernetes_validate.validate(statefulset(built, config), version, strict=True)


@pytest.mark.parametrize(("annotations", "held"), [
    ({}, True), ({DELETION_PROTECTION_ANNOTATION: "true"}, True),
    ({DELETION_PROTECTION_ANNOTATION: "False"}, True),  # only the exact "false" lifts it
    ({DELETION_PROTECTION_ANNOTATION: ""}, True),
    ({DELETION_PROTECTION_ANNOTATION: "false"}, False),
])
def test_a_market_is_protected_unless_annotated_false(annotations: dict[str, str],
                                                      held: bool) -> None:
    assert protection.protected(annotations) is held


def test_the_retirements_patience_counts_from_when_retiring_began() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    runtime = datetime.timedelta(hours=5)  # held for hours before the annotation allowed it
    began = [{"type": "Retiring", "status": "True", "lastTransitionTime": "2026-01-02T03:04:00Z"}]
    assert protection.retiring_for(began, runtime, now) == datetime.timedelta(seconds=5)
    held = [{"type": "Retiring", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    assert protection.retiring_for(held, runtime, now) == runtime
    assert protection.retiring_for([], runtime, now) == runtime  # an older operator began it


def test_the_operator_stops_at_start_naming_a_setting_it_cannot_take() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "tradeplane", "--nats", "nats://127.0.0.1:9", "operator"],
        env={**os.environ, "TRADEPLANE_ENGINE_TOLERATIONS": '[{"effect": "NoSchedule"}]'},
        capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.strip() == (
        "tradeplane operator: TRADEPLANE_ENGINE_TOLERATIONS: 0: Value error, a toleration "
        "without a key must have operator Exists")
