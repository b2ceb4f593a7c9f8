"""The chart's ledger (docs/ledger.md), installed into the emulator with the real Helm
library: a StatefulSet whose pods each run a replica of every shard, named by their pod,
on different nodes by default, or one StatefulSet per shard (``ledger.processPerShard``);
its budget, headless Service, ServiceMonitor and NetworkPolicy; ``--ledger-shards`` for
the gateways, the recorders and the helm test; and none of it with ``ledger.enabled:
false``. Every object is validated as Kubernetes takes it. The asset-defining hook Job
runs in tests/chart/test_helm_test.py, against a real ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kopf
import pytest
import yaml

from tests.chart.test_chart import (
    CHART,
    CRDS,
    OWN_KINDS,
    SERVICE_MONITORS,
    by_kind,
    documents,
    install,
    validate,
)
from tests.chart.test_chart import _merged as merged
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane_operator.kube import KubeApi

LEDGER = "tp-tradeplane-ledger"


async def _installed(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    async with cluster(tmp_path) as emulated:
        kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
        await kube.create(CRDS, None, SERVICE_MONITORS)
        await kube.close()
        result = await install(emulated, tmp_path, values)
        assert result.get("status") == "deployed", result.get("error")
        return documents(result)


def _validated(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The objects by kind and name, each validated as Kubernetes takes it."""
    for obj in objects:
        if obj["apiVersion"].split("/")[0] not in OWN_KINDS:
            assert validate(obj) >= 1, obj["metadata"]["name"]
    return by_kind(objects)


def _args(made: dict[str, dict[str, dict[str, Any]]], kind: str, name: str) -> list[str]:
    spec = made[kind][name]["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    args: list[str] = pod["containers"][0]["args"]
    return args


def test_the_default_ledger(tmp_path: Path) -> None:
    objects = run(_installed(tmp_path, {}))
    made = _validated(objects)
    ledger = made["StatefulSet"][LEDGER]
    spec = ledger["spec"]
    assert spec["replicas"] == 2  # a leader and a standby of each shard
    assert spec["serviceName"] == LEDGER
    assert spec["podManagementPolicy"] == "Parallel"
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "tradeplane",
                        "app.kubernetes.io/instance": "tp",
                        "app.kubernetes.io/component": "ledger"}
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    # Every shard in one process; the replica is the pod's stable name.
    assert container["args"] == ["ledger", "--shards", "1", "--replica", "$(POD_NAME)",
                                 "--stream-replicas", "1", "--health-port", "9105"]
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TRADEPLANE_CREDENTIALS"]["value"] == "/etc/tradeplane/credentials/ledger.json"
    assert container["ports"] == [{"name": "health", "containerPort": 9105,
                                   "protocol": "TCP"}]
    # The engines' probes (operator/tradeplane_operator/children.py).
    ready = {"httpGet": {"path": "/readyz", "port": "health"}}
    assert container["startupProbe"] == {**ready, "periodSeconds": 5, "timeoutSeconds": 5,
                                         "failureThreshold": 120}
    assert container["readinessProbe"] == {**ready, "periodSeconds": 2,
                                           "failureThreshold": 2}
    assert container["livenessProbe"] == {"httpGet": {"path": "/livez", "port": "health"},
                                          "periodSeconds": 10, "timeoutSeconds": 5,
                                          "failureThreshold": 3}
    # Only the ledger's own credentials.
    [volume] = pod["volumes"]
    assert volume["secret"] == {"secretName": "tradeplane-nats", "defaultMode": 0o440,
                                "items": [{"key": "ledger.json", "path": "ledger.json"}]}
    assert container["volumeMounts"] == [{"name": "nats-credentials", "readOnly": True,
                                          "mountPath": "/etc/tradeplane/credentials"}]
    # Hardened as every tradeplane pod.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001,
                                      "runAsGroup": 10001, "fsGroup": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    # A leader and its standby never on one node.
    [term] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": selector}}
    assert [constraint["topologyKey"] for constraint in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone"]

    budget = made["PodDisruptionBudget"][LEDGER]["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    service = made["Service"][LEDGER]["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"] == selector
    assert service["ports"] == [{"name": "health", "port": 9105, "targetPort": "health",
                                 "protocol": "TCP"}]
    assert "Job" not in made  # no assets given: none defined by the chart

    # Balances everywhere: the gateways fund orders, the recorders keep the journal, the
    # helm test funds its accounts.
    for kind, name in (("Deployment", "tp-tradeplane-gateway"),
                       ("Deployment", "tp-tradeplane-recorder"),
                       ("Pod", "tp-tradeplane-test-trade")):
        args = _args(made, kind, name)
        assert args[args.index("--ledger-shards") + 1] == "1", name


def test_shards_monitoring_policies_and_a_preference(tmp_path: Path) -> None:
    objects = run(_installed(tmp_path, {
        "ledger": {"shards": 4, "replicas": 3, "healthPort": 9200,
                   "antiAffinity": "preferred", "nodeSelector": {"pool": "ledger"},
                   "tolerations": [{"key": "ledger", "operator": "Exists",
                                    "effect": "NoSchedule"}],
                   "topologySpread": {"topologyKeys": []}},
        "nats": {"streamReplicas": 3, "tls": {"caSecret": "nats-ca",
                                              "clientCertSecret": "tradeplane-nats-tls"}},
        "monitoring": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True}}))
    made = _validated(objects)
    spec = made["StatefulSet"][LEDGER]["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["args"] == [
        "ledger", "--shards", "4", "--replica", "$(POD_NAME)", "--stream-replicas", "3",
        "--health-port", "9200"]
    assert list(pod["affinity"]["podAntiAffinity"]) == [
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert pod["nodeSelector"] == {"pool": "ledger"}
    assert pod["tolerations"][0]["key"] == "ledger"
    assert "topologySpreadConstraints" not in pod
    # TLS wired as for every pod: the CA and the client certificate mounted and named.
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["TRADEPLANE_NATS_CA"] == "/etc/tradeplane/nats-ca/ca.crt"
    assert env["TRADEPLANE_NATS_CERT"] == "/etc/tradeplane/nats-client/tls.crt"
    assert {volume["name"] for volume in pod["volumes"]} == {
        "nats-credentials", "nats-ca", "nats-client-tls"}
    for kind, name in (("Deployment", "tp-tradeplane-gateway"),
                       ("Deployment", "tp-tradeplane-recorder"),
                       ("Pod", "tp-tradeplane-test-trade")):
        args = _args(made, kind, name)
        assert args[args.index("--ledger-shards") + 1] == "4", name
    monitor = made["ServiceMonitor"][LEDGER]["spec"]
    assert monitor["endpoints"] == [{"port": "health", "path": "/metrics",
                                     "interval": "30s"}]
    policy = made["NetworkPolicy"][LEDGER]["spec"]
    assert policy["podSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert policy["ingress"][0]["ports"] == [{"port": "health", "protocol": "TCP"}]
    egress = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert egress == {53, 4222}  # NATS and DNS: the ledger has no database


def test_a_statefulset_per_shard(tmp_path: Path) -> None:
    """``ledger.processPerShard``: each shard's pods run it alone (``--shard K``), apart
    from one another's on nodes, in one budget, Service, monitor and policy."""
    objects = run(_installed(tmp_path, {
        "ledger": {"shards": 3, "processPerShard": True},
        "monitoring": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True}}))
    made = _validated(objects)
    ledgers = {name: sts for name, sts in made["StatefulSet"].items()
               if sts["metadata"]["labels"]["app.kubernetes.io/component"] == "ledger"}
    assert sorted(ledgers) == [f"{LEDGER}-{shard}" for shard in range(3)]
    component = {"app.kubernetes.io/name": "tradeplane", "app.kubernetes.io/instance": "tp",
                 "app.kubernetes.io/component": "ledger"}
    for shard in range(3):
        spec = ledgers[f"{LEDGER}-{shard}"]["spec"]
        assert spec["replicas"] == 2  # a leader and a standby of the shard
        assert spec["serviceName"] == LEDGER  # one headless Service for every ledger pod
        selector = spec["selector"]["matchLabels"]
        assert selector == {**component, "tradeplane.dev/ledger-shard": str(shard)}
        pod = spec["template"]["spec"]
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()
        assert pod["containers"][0]["args"] == [
            "ledger", "--shards", "3", "--shard", str(shard), "--replica", "$(POD_NAME)",
            "--stream-replicas", "1", "--health-port", "9105"]
        # A shard's leader and standby never on one node; other shards' pods may be.
        [term] = pod["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["labelSelector"]["matchLabels"] == selector
        [spread] = pod["topologySpreadConstraints"]
        assert spread["labelSelector"]["matchLabels"] == selector
    assert made["Service"][LEDGER]["spec"]["selector"] == component
    assert made["PodDisruptionBudget"][LEDGER]["spec"]["selector"]["matchLabels"] == component
    assert made["ServiceMonitor"][LEDGER]["spec"]["selector"]["matchLabels"] == component
    assert made["NetworkPolicy"][LEDGER]["spec"]["podSelector"]["matchLabels"] == component
    for kind, name in (("Deployment", "tp-tradeplane-gateway"),
                       ("Deployment", "tp-tradeplane-recorder")):
        args = _args(made, kind, name)
        assert args[args.index("--ledger-shards") + 1] == "3", name


def test_an_affinity_given_replaces_the_anti_affinity(tmp_path: Path) -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["ledger"]}]}]}}}
    made = by_kind(run(_installed(tmp_path, {"ledger": {"affinity": affinity}})))
    assert made["StatefulSet"][LEDGER]["spec"]["template"]["spec"]["affinity"] == affinity


def test_without_the_ledger_nothing_of_it_and_no_balances(tmp_path: Path) -> None:
    objects = run(_installed(tmp_path, {
        "ledger": {"enabled": False, "assets": {"BTC": 8}},
        "monitoring": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"enabled": True}}))
    assert not [obj for obj in objects if "ledger" in obj["metadata"]["name"]]
    made = by_kind(objects)
    assert "StatefulSet" not in made
    assert "Job" not in made
    for kind, name in (("Deployment", "tp-tradeplane-gateway"),
                       ("Deployment", "tp-tradeplane-recorder"),
                       ("Pod", "tp-tradeplane-test-trade")):
        assert "--ledger-shards" not in _args(made, kind, name), name


WRONG: dict[str, tuple[dict[str, Any], str]] = {
    "no shards": ({"ledger": {"shards": 0}}, "ledger.shards"),
    "no replicas": ({"ledger": {"replicas": 0}}, "ledger.replicas"),
    "shards as text": ({"ledger": {"shards": "one"}}, "ledger.shards"),
    "anti-affinity sometimes": ({"ledger": {"antiAffinity": "sometimes"}},
                                "ledger.antiAffinity"),
    "health port out of range": ({"ledger": {"healthPort": 0}}, "ledger.healthPort"),
    "asset in lower case": ({"ledger": {"assets": {"btc": 8}}}, "ledger.assets"),
    "too many decimals": ({"ledger": {"assets": {"BTC": 19}}}, "ledger.assets.BTC"),
    "decimals as text": ({"ledger": {"assets": {"BTC": "8"}}}, "ledger.assets.BTC"),
    "budget in words": ({"ledger": {"podDisruptionBudget": {"maxUnavailable": "one"}}},
                        "maxUnavailable"),
    "unknown key": ({"ledger": {"shard": 2}}, "'shard' was unexpected"),
}


@pytest.mark.parametrize(("change", "where"), WRONG.values(), ids=WRONG.keys())
def test_the_schema_refuses_wrong_ledger_values(change: dict[str, Any], where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(merged(defaults, {"ledger": {
        "assets": {"BTC": 8, "USDT": 6}}}))) == []
    errors = [f"{error.json_path} {error.message}"
              for error in validator.iter_errors(merged(defaults, change))]
    assert any(where in error for error in errors), errors
