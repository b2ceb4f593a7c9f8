"""The Helm chart, with the real Helm library: lint, install into the emulated API server
(memory driver) for the default values and a few meaningful combinations, what it made,
RBAC against the operator's code, strict schema validation of every manifest for the
oldest and newest Kubernetes the chart supports, and wrong values refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kopf
import kubernetes_validate
import pytest
import yaml

from tests.support.exchange import run
from tests.support.kube import Cluster, cluster
from tradeplane_operator.kube import (
    USED,
    USED_FOR_LEADER_ELECTION,
    USED_WHEN_NAMESPACED,
    KubeApi,
    Resource,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tradeplane"
VERSIONS = ("1.29", "1.37")
"""The oldest Kubernetes the chart supports (CEL rules on CRDs are GA from 1.29) and the
newest kubernetes-validate knows."""
OWN_KINDS = {"tradeplane.dev", "monitoring.coreos.com"}
"""API groups of custom resources: validated by their own CRDs, not by Kubernetes' schemas."""
SERVICE_MONITORS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object"}}}]},
}
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
ADMISSION_POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


async def helm(job: dict[str, Any], home: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chart.helm_job", json.dumps(job), cwd=ROOT,
        env={**os.environ, "HELM_DRIVER": "memory", "HOME": str(home)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    output, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()[-3000:]
    result: dict[str, Any] = json.loads(output)
    return result


async def install(emulated: Cluster, home: Path, values: dict[str, Any],
                  release: str = "tp") -> dict[str, Any]:
    return await helm({"install": True, "release": release, "chart": str(CHART),
                       "kubeconfig": str(emulated.kubeconfig), "namespace": "exchange",
                       "values": values}, home)


def validate(obj: dict[str, Any]) -> int:
    """Validate a manifest strictly for each Kubernetes in ``VERSIONS`` that serves its
    kind (admission policies from 1.30: the chart leaves them out before); how many."""
    checked = 0
    for version in VERSIONS:
        if obj["kind"] in ADMISSION_POLICY_KINDS and version < "1.30":
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    return checked


def documents(result: dict[str, Any]) -> list[dict[str, Any]]:
    texts = [result["manifest"], *result.get("hooks", [])]
    return [document for text in texts for document in yaml.safe_load_all(text) if document]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        found.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    return found


def test_the_chart_lints_clean(tmp_path: Path) -> None:
    result = run(helm({"lint": True, "chart": str(CHART)}, tmp_path))
    errors = [message for message in result["lint"]["Messages"] if message["Severity"] >= 3]
    assert errors == []
    assert result["lint"]["TotalChartsLinted"] == 1


def test_the_default_install(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            result = await install(emulated, tmp_path, {})
            assert result.get("status") == "deployed", result.get("error")
            made = by_kind(documents(result))
            # What the API server now holds is what Helm rendered.
            assert set(emulated.objects("deployments", "exchange")) == {
                "tp-tradeplane-operator", "tp-tradeplane-gateway", "tp-tradeplane-recorder",
                "tp-tradeplane-auth"}
            assert set(emulated.objects("services", "exchange")) == {
                "tp-tradeplane-gateway", "tp-tradeplane-recorder", "tp-tradeplane-auth",
                "tp-tradeplane-ledger"}
            assert set(emulated.objects("statefulsets", "exchange")) == {
                "tp-tradeplane-ledger"}
            assert "tp-tradeplane-operator" in emulated.objects("serviceaccounts", "exchange")
            crds = {name for (resource, _, name), obj in emulated.emulator.objects.items()
                    if resource.plural == "customresourcedefinitions" and not obj.deleted}
            assert crds == {"markets.tradeplane.dev"}
            assert not emulated.objects("secrets", "exchange")  # the memory driver

            operator = made["Deployment"]["tp-tradeplane-operator"]
            # Two replicas, one acting by the Lease; a rolling update keeps a standby.
            assert operator["spec"]["replicas"] == 2
            assert operator["spec"]["strategy"] == {
                "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
            pod = operator["spec"]["template"]["spec"]
            spread = pod["affinity"]["podAntiAffinity"][
                "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            assert spread["topologyKey"] == "kubernetes.io/hostname"
            assert spread["labelSelector"]["matchLabels"] == operator["spec"]["selector"][
                "matchLabels"]
            assert pod["serviceAccountName"] == "tp-tradeplane-operator"
            container = pod["containers"][0]
            assert container["image"] == "ghcr.io/tradeplane/tradeplane:0.1.0"
            assert container["args"][0] == "operator"
            env = {item["name"]: item for item in container["env"]}
            assert env["TRADEPLANE_NATS"]["value"] == "nats://nats:4222"
            assert env["TRADEPLANE_NAMESPACES"]["value"] == ""
            assert env["TRADEPLANE_POSTGRES_SECRET"]["value"] == "tradeplane-postgres"
            assert env["TRADEPLANE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
                "metadata.name")  # its identity in the Lease
            assert env["TRADEPLANE_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"][
                "fieldPath"] == "metadata.namespace"
            assert [env[f"TRADEPLANE_{name}"]["value"] for name in (
                "LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")] == ["15", "10", "2"]
            assert env["TRADEPLANE_ANTI_AFFINITY"]["value"] == "required"
            assert json.loads(env["TRADEPLANE_ENGINE_TOPOLOGY_SPREAD"]["value"]) == [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway"}]
            assert [json.loads(env[f"TRADEPLANE_ENGINE_{name}"]["value"]) for name in (
                "NODE_SELECTOR", "TOLERATIONS", "IMAGE_PULL_SECRETS")] == [{}, [], []]
            assert env["TRADEPLANE_ENGINE_PRIORITY_CLASS"]["value"] == ""
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True

            gateway = made["Deployment"]["tp-tradeplane-gateway"]
            assert gateway["spec"]["replicas"] == 2
            assert gateway["spec"]["template"]["spec"]["containers"][0]["args"][0] == "gateway"
            recorder = made["Deployment"]["tp-tradeplane-recorder"]
            recorder_container = recorder["spec"]["template"]["spec"]["containers"][0]
            assert "--market" not in recorder_container["args"]  # follows every market
            dsn = {item["name"]: item for item in recorder_container["env"]}[
                "TRADEPLANE_POSTGRES_DSN"]
            assert dsn["valueFrom"]["secretKeyRef"] == {"name": "tradeplane-postgres",
                                                        "key": "dsn"}
            for name, deployment in made["Deployment"].items():
                labels = deployment["metadata"]["labels"]
                assert labels["app.kubernetes.io/instance"] == "tp", name
                assert labels["helm.sh/chart"] == "tradeplane-0.1.0", name
                selector = deployment["spec"]["selector"]["matchLabels"]
                assert selector.items() <= deployment["spec"]["template"]["metadata"][
                    "labels"].items(), name
            # The helm test's Market and pod are hooks: rendered, not installed.
            assert "helm-test-usdt" in made["Market"]
            assert emulated.get("markets", "helm-test-usdt", "exchange") is None
            assert "ServiceMonitor" not in made
    run(scenario())


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


USED_RULES = {(resource.group, resource.plural, verb)
              for resource, verbs in USED.items() for verb in verbs}
LEADER_ELECTION_RULES = {(resource.group, resource.plural, verb)
                         for resource, verbs in USED_FOR_LEADER_ELECTION.items()
                         for verb in verbs}


def leader_election(objects: list[dict[str, Any]], release: str) -> None:
    """The Lease's Role: in the release's namespace, for that one Lease (but create,
    which cannot name it), bound to the operator's service account."""
    role = by_kind(objects)["Role"][f"{release}-tradeplane-operator-leader-election"]
    assert role["metadata"]["namespace"] == "exchange"
    assert rules(role) == LEADER_ELECTION_RULES
    for rule in role["rules"]:
        assert rule.get("resourceNames", [f"{release}-tradeplane-operator"]) == [
            f"{release}-tradeplane-operator"] or rule["verbs"] == ["create"]
    binding = by_kind(objects)["RoleBinding"][f"{release}-tradeplane-operator-leader-election"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == f"{release}-tradeplane-operator"
    operator = by_kind(objects)["Deployment"][f"{release}-tradeplane-operator"]
    env = {item["name"]: item.get("value") for item in
           operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRADEPLANE_LEASE_NAME"] == f"{release}-tradeplane-operator"


def test_rbac_is_exactly_what_the_operator_uses(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            installed = documents(await install(emulated, tmp_path, {}))
            clusterwide = by_kind(installed)
            assert rules(clusterwide["ClusterRole"]["tp-tradeplane-operator"]) == USED_RULES
            leader_election(installed, "tp")
            binding = clusterwide["ClusterRoleBinding"]["tp-tradeplane-operator"]
            assert binding["subjects"] == [{"kind": "ServiceAccount",
                                            "name": "tp-tradeplane-operator",
                                            "namespace": "exchange"}]

            namespaced = await install(emulated, tmp_path, {
                "operator": {"watchNamespaces": ["desk-a", "desk-b"]}}, release="ns")
            assert "error" not in namespaced, namespaced.get("error")
            objects = documents(namespaced)
            cluster_role = by_kind(objects)["ClusterRole"]["ns-tradeplane-operator"]
            leader_election(objects, "ns")
            roles = [obj for obj in objects if obj["kind"] == "Role"
                     and obj["metadata"]["name"] == "ns-tradeplane-operator"]
            assert sorted(role["metadata"]["namespace"] for role in roles) == [
                "desk-a", "desk-b"]
            cluster_rules = rules(cluster_role)
            namespaced_extra = {(resource.group, resource.plural, verb) for resource, verbs
                                in USED_WHEN_NAMESPACED.items() for verb in verbs}
            for role in roles:
                assert rules(role) | cluster_rules == USED_RULES | namespaced_extra
                assert not rules(role) & cluster_rules
            assert {resource for _, resource, _ in cluster_rules} == {
                "customresourcedefinitions", "namespaces"}
            operator = by_kind(objects)["Deployment"]["ns-tradeplane-operator"]
            env = {item["name"]: item.get("value") for item in
                   operator["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["TRADEPLANE_NAMESPACES"] == "desk-a,desk-b"
    run(scenario())


COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring, mutual TLS, a pinned image": {
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "nats": {"streamReplicas": 3, "tls": {"caSecret": "nats-ca",
                                              "clientCertSecret": "tradeplane-nats-tls"}},
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
    },
    "operator only, its own service account, named namespaces": {
        "gateway": {"enabled": False}, "recorder": {"enabled": False},
        "auth": {"enabled": False}, "ledger": {"enabled": False},
        "operator": {"serviceAccount": {"create": False, "name": "existing"},
                     "watchNamespaces": ["markets"], "antiAffinity": "required"},
    },
    "recorders for two markets, no operator": {
        "operator": {"enabled": False},
        "recorder": {"markets": ["btc-usdt", "eth-usdt"], "replicas": 2},
        "postgres": {"existingSecret": "pg", "secretKey": "uri"},
    },
    "no credentials, no auth service, a CA from a ConfigMap": {
        "nats": {"credentials": {"existingSecret": ""}, "tls": {"caConfigMap": "nats-ca"}},
        "auth": {"enabled": False},
    },
}


@pytest.mark.parametrize("values", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_every_manifest_is_valid_for_oldest_and_newest_kubernetes(
        tmp_path: Path, values: dict[str, Any]) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
            await kube.create(CRDS, None, SERVICE_MONITORS)
            await kube.close()
            result = await install(emulated, tmp_path, values)
            assert result.get("status") == "deployed", result.get("error")
            crd_text = (CHART / "crds" / "markets.tradeplane.dev.yaml").read_text()
            return [*documents(result), yaml.safe_load(crd_text)]

    objects = run(scenario())
    checked = 0
    for obj in objects:
        if obj["apiVersion"].split("/")[0] in OWN_KINDS:
            continue
        checked += validate(obj)
    assert checked >= 2 * 4
    made = by_kind(objects)
    if values.get("monitoring"):
        assert set(made["ServiceMonitor"]) == {"tp-tradeplane-gateway",
                                               "tp-tradeplane-recorder",
                                               "tp-tradeplane-auth",
                                               "tp-tradeplane-ledger"}
        assert made["ServiceMonitor"]["tp-tradeplane-gateway"]["metadata"]["labels"][
            "release"] == "prom"
    if values.get("recorder", {}).get("markets"):
        args = made["Deployment"]["tp-tradeplane-recorder"]["spec"]["template"]["spec"][
            "containers"][0]["args"]
        assert args[-4:] == ["--market", "btc-usdt", "--market", "eth-usdt"]
        assert "Deployment" not in made or "tp-tradeplane-operator" not in made["Deployment"]
    if values.get("operator", {}).get("serviceAccount"):
        assert "ServiceAccount" not in made
        assert set(made["Deployment"]) == {"tp-tradeplane-operator"}


WRONG: dict[str, tuple[dict[str, Any], str]] = {
    "unknown key": ({"gatway": {"replicas": 3}}, "'gatway' was unexpected"),
    "replicas as text": ({"gateway": {"replicas": "two"}}, "gateway.replicas"),
    "negative replicas": ({"recorder": {"replicas": -1}}, "recorder.replicas"),
    "stream replicas 2": ({"nats": {"streamReplicas": 2}}, "streamReplicas"),
    "not a NATS URL": ({"nats": {"url": "http://nats:4222"}}, "url"),
    "an image pattern with a comma": ({"operator": {"allowedEngineImages": ["a:*,b:*"]}},
                                      "allowedEngineImages"),
    "anti-affinity sometimes": ({"operator": {"antiAffinity": "sometimes"}}, "antiAffinity"),
    "port out of range": ({"gateway": {"metricsPort": 70000}}, "gateway.metricsPort"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "market name": ({"recorder": {"markets": ["BTC_USDT"]}}, "markets"),
    "recorders without PostgreSQL": ({"postgres": {"existingSecret": ""}}, "existingSecret"),
    "cpu as words": ({"gateway": {"resources": {"requests": {"cpu": "lots"}}}}, "cpu"),
    "scrape interval": ({"monitoring": {"serviceMonitor": {"interval": "often"}}},
                        "interval"),
    "a URL with a password": ({"nats": {"url": "nats://gateway:secret@nats:4222"}}, "url"),
    "the URL Secret of old": ({"nats": {"existingSecret": "nats-url"}},
                              "'existingSecret' was unexpected"),
    "a CA twice": ({"nats": {"tls": {"caSecret": "a", "caConfigMap": "b"}}}, "tls"),
    "auth without credentials": ({"nats": {"credentials": {"existingSecret": ""}}},
                                 "existingSecret"),
    "auth without PostgreSQL": ({"recorder": {"enabled": False},
                                 "postgres": {"existingSecret": ""}}, "existingSecret"),
}


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in change.items():
        result[key] = (_merged(base[key], value) if isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return result


@pytest.mark.parametrize(("change", "where"), WRONG.values(), ids=WRONG.keys())
def test_the_schema_refuses_wrong_values(change: dict[str, Any], where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(defaults)) == []
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(
        _merged(defaults, change)))
    assert errors, change
    assert any(where in f"{error.json_path} {error.message}" for error in errors), [
        (error.json_path, error.message) for error in errors]


def test_helm_refuses_wrong_values_before_making_anything(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            for change in ({"gatway": {"replicas": 3}}, {"gateway": {"replicas": "two"}}):
                result = await install(emulated, tmp_path, change)
                assert "values don't meet the specifications of the schema" in result[
                    "error"], result
            assert not emulated.objects("deployments", "exchange")
    run(scenario())


def test_every_value_is_documented() -> None:
    """values.yaml says what each key is for, on the line(s) before it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        value = stripped.split(":", 1)[1].strip()
        if value == "" or (value.startswith("{") and not value.endswith("}")):
            continue  # a section: its keys are documented one by one
        if stripped.startswith(("requests:", "limits:")):
            continue  # inside a documented resources block
        above = next((lines[index].strip() for index in range(number - 1, -1, -1)
                      if lines[index].strip()), "")
        if not above.startswith("#"):
            undocumented.append(stripped)
    assert undocumented == []
