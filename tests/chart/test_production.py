"""What the chart does for production: probes that ask whether a process is connected to
NATS, PodDisruptionBudgets and topology spread for the stateless Deployments, image pull
secrets as Kubernetes takes them and images pinned by digest. Installed into the
emulator with the real Helm library, and the schema asked about wrong values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.test_chart import (
    CHART,
    OWN_KINDS,
    _merged,
    by_kind,
    documents,
    install,
    validate,
)
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane_operator import images
from tradeplane_operator.children import Market, statefulset
from tradeplane_operator.config import Config

DIGEST = "sha256:" + "ab" * 32


async def _installed(tmp_path: Path, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    async with cluster(tmp_path) as emulated:
        result = await install(emulated, tmp_path, values)
        assert result.get("status") == "deployed", result.get("error")
        objects = documents(result)
    for obj in objects:
        if obj["apiVersion"].split("/")[0] not in OWN_KINDS:
            validate(obj)
    return by_kind(objects)


def _pod(made: dict[str, dict[str, Any]], component: str) -> dict[str, Any]:
    pod: dict[str, Any] = made["Deployment"][f"tp-tradeplane-{component}"]["spec"]["template"]
    return pod


def test_probes_ask_the_processes_whether_they_are_connected(tmp_path: Path) -> None:
    made = run(_installed(tmp_path, {}))
    for component in ("gateway", "recorder", "auth"):
        container = _pod(made, component)["spec"]["containers"][0]
        assert container["args"][1:3] == ["--metrics-port", str(
            {"gateway": 9101, "recorder": 9102, "auth": 9103}[component])]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert "metrics" in {port["name"] for port in container["ports"]}


def test_stateless_deployments_have_budgets_and_spread(tmp_path: Path) -> None:
    made = run(_installed(tmp_path, {}))
    assert set(made["PodDisruptionBudget"]) == {"tp-tradeplane-gateway", "tp-tradeplane-auth",
                                                "tp-tradeplane-ledger"}
    for component in ("gateway", "auth"):
        deployment = made["Deployment"][f"tp-tradeplane-{component}"]
        assert deployment["spec"]["replicas"] >= 2
        selector = deployment["spec"]["selector"]["matchLabels"]
        budget = made["PodDisruptionBudget"][f"tp-tradeplane-{component}"]["spec"]
        assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [constraint["topologyKey"] for constraint in spread] == [
            "kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        for constraint in spread:
            assert constraint["labelSelector"] == {"matchLabels": selector}
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            assert constraint["maxSkew"] == 1


def test_budgets_and_spread_can_be_turned_off(tmp_path: Path) -> None:
    off = {"podDisruptionBudget": {"enabled": False}, "topologySpread": {"topologyKeys": []}}
    made = run(_installed(tmp_path, {"gateway": off, "ledger": off, "auth": {
        **off, "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}}}))
    assert set(made["PodDisruptionBudget"]) == {"tp-tradeplane-auth"}
    assert made["PodDisruptionBudget"]["tp-tradeplane-auth"]["spec"]["maxUnavailable"] == "50%"
    assert "topologySpreadConstraints" not in _pod(made, "gateway")["spec"]


def test_pull_secrets_and_a_digest_reach_every_pod(tmp_path: Path) -> None:
    made = run(_installed(tmp_path, {
        "image": {"digest": DIGEST}, "imagePullSecrets": [{"name": "regcred"}]}))
    image = f"ghcr.io/tradeplane/tradeplane@{DIGEST}"
    for component in ("operator", "gateway", "recorder", "auth"):
        pod = _pod(made, component)["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], component
        assert pod["containers"][0]["image"] == image, component
    operator = _pod(made, "operator")["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in operator["env"]}
    assert env["TRADEPLANE_ENGINE_IMAGE"] == image  # the engines run the pinned image too
    # By default a Market may name that repository alone (another tag or digest of it).
    config = Config.from_environment(env)
    assert config.allowed_engine_images == ()
    assert images.allowed("ghcr.io/tradeplane/tradeplane:0.2.0", config)
    assert not images.allowed("docker.io/library/busybox", config)


def test_the_engine_image_policy_reaches_the_operator(tmp_path: Path) -> None:
    made = run(_installed(tmp_path, {"operator": {"allowedEngineImages": [
        "registry.example.com/tradeplane/*", "ghcr.io/tradeplane/tradeplane:*"]}}))
    operator = _pod(made, "operator")["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in operator["env"]}
    assert Config.from_environment(env).allowed_engine_images == (
        "registry.example.com/tradeplane/*", "ghcr.io/tradeplane/tradeplane:*")


def _engine_pod(made: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The engine pod the installed operator would make: its Deployment's environment
    read by ``Config.from_environment``, as the operator reads it."""
    container = _pod(made, "operator")["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    market = Market.from_body({
        "metadata": {"name": "btc-usdt", "namespace": "desk-a", "uid": "1"},
        "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1", "lotSize": "0.001"}})
    pod: dict[str, Any] = statefulset(market, Config.from_environment(env))["spec"][
        "template"]["spec"]
    return pod


def test_engines_by_default_never_share_a_node_spread_over_zones_and_pull_with_the_charts_secrets(
        tmp_path: Path) -> None:
    pod = _engine_pod(run(_installed(tmp_path, {"imagePullSecrets": [{"name": "regcred"}]})))
    assert list(pod["affinity"]["podAntiAffinity"]) == [
        "requiredDuringSchedulingIgnoredDuringExecution"]
    [zone] = pod["topologySpreadConstraints"]
    assert (zone["topologyKey"], zone["whenUnsatisfiable"], zone["maxSkew"]) == (
        "topology.kubernetes.io/zone", "ScheduleAnyway", 1)
    assert zone["labelSelector"]["matchLabels"]["tradeplane.dev/market"] == "btc-usdt"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert "nodeSelector" not in pod
    assert "priorityClassName" not in pod
    assert pod["tolerations"] == []


def test_engine_defaults_reach_the_engine_pods(tmp_path: Path) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "exchange",
                  "effect": "NoSchedule"}
    pod = _engine_pod(run(_installed(tmp_path, {
        "imagePullSecrets": [{"name": "chart-secret"}],
        "operator": {"antiAffinity": "preferred", "engineDefaults": {
            "nodeSelector": {"pool": "exchange"}, "tolerations": [toleration],
            "topologySpreadConstraints": [],
            "priorityClassName": "exchange-critical",
            "imagePullSecrets": [{"name": "engine-secret"}]}}})))
    assert list(pod["affinity"]["podAntiAffinity"]) == [
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert pod["nodeSelector"] == {"pool": "exchange"}
    assert pod["tolerations"] == [toleration]
    assert pod["topologySpreadConstraints"] == []
    assert pod["priorityClassName"] == "exchange-critical"
    assert pod["imagePullSecrets"] == [{"name": "engine-secret"}]


def test_the_helm_test_pod_pulls_with_the_secrets(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with cluster(tmp_path) as emulated:
            result = await install(emulated, tmp_path, {"imagePullSecrets": [{"name": "r"}]})
            assert result.get("status") == "deployed", result.get("error")
            return documents(result)

    [pod] = [obj for obj in run(scenario()) if obj["kind"] == "Pod"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "r"}]


@pytest.mark.parametrize(("change", "where"), [
    ({"imagePullSecrets": ["regcred"]}, "imagePullSecrets"),
    ({"imagePullSecrets": [{"secret": "regcred"}]}, "imagePullSecrets"),
    ({"image": {"digest": "sha256:abc"}}, "digest"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"gateway": {"podDisruptionBudget": {"maxUnavailable": "half"}}}, "maxUnavailable"),
    ({"auth": {"topologySpread": {"whenUnsatisfiable": "Sometimes"}}}, "whenUnsatisfiable"),
    ({"networkPolicy": {"nats": {"to": ["nats"]}}}, "networkPolicy.nats.to"),
    ({"networkPolicy": {"nats": {"ports": []}}}, "networkPolicy.nats.ports"),
    ({"networkPolicy": {"monitoringNamespace": "Monitoring"}}, "monitoringNamespace"),
    ({"operator": {"engineDefaults": {"tolerations": [{"key": "a", "operator": "Is"}]}}},
     "engineDefaults.tolerations"),
    ({"operator": {"engineDefaults": {"tolerations": [{"effect": "NoSchedule"}]}}},
     "engineDefaults.tolerations"),
    ({"operator": {"engineDefaults": {"tolerations": "dedicated"}}},
     "engineDefaults.tolerations"),
    ({"operator": {"engineDefaults": {"topologySpreadConstraints": [{"maxSkew": 1}]}}},
     "topologySpreadConstraints"),
    ({"operator": {"engineDefaults": {"topologySpreadConstraints": [
        {"topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]}}}, "whenUnsatisfiable"),
    ({"operator": {"engineDefaults": {"nodeSelector": {"pool": 1}}}}, "nodeSelector"),
    ({"operator": {"engineDefaults": {"priorityClassName": "High"}}}, "priorityClassName"),
    ({"operator": {"engineDefaults": {"imagePullSecrets": ["regcred"]}}},
     "engineDefaults.imagePullSecrets"),
    ({"operator": {"engineDefaults": {"affinity": {}}}}, "'affinity' was unexpected"),
], ids=["names alone", "no name", "short digest", "a tag as digest", "budget in words",
        "spread mode", "peers as text", "no NATS port", "monitoring namespace",
        "toleration operator", "toleration without key", "tolerations as text",
        "spread without key", "engine spread mode", "node selector number",
        "priority class name", "engine pull secrets as names", "unknown engine default"])
def test_the_schema_refuses_wrong_production_values(change: dict[str, Any], where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = _merged(yaml.safe_load((CHART / "values.yaml").read_text()), change)
    errors = [f"{error.json_path} {error.message}"
              for error in jsonschema.Draft202012Validator(schema).iter_errors(values)]
    assert any(where in error for error in errors), errors


def test_the_operator_serves_its_metrics_and_a_pod_monitor_scrapes_them(
        tmp_path: Path) -> None:
    from tests.chart.test_monitoring import _installed as installed_with_monitors

    made = by_kind(run(installed_with_monitors(tmp_path, {
        "monitoring": {"podMonitor": {"enabled": True}}})))
    deployment = made["Deployment"]["tp-tradeplane-operator"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--metrics-port", "9104"]
    assert {"name": "metrics", "containerPort": 9104, "protocol": "TCP"} in container["ports"]
    monitor = made["PodMonitor"]["tp-tradeplane-operator"]["spec"]
    assert monitor["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics",
                                               "interval": "30s"}]
    assert "namespaceSelector" not in monitor  # the release's namespace


def _rules(policy: dict[str, Any]) -> tuple[set[tuple[str, int | str]], set[str | int]]:
    """The egress (protocol, port) pairs a policy allows, and its ingress ports."""
    egress = {(port["protocol"], port["port"]) for rule in policy["spec"]["egress"]
              for port in rule["ports"]}
    ingress = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    return egress, ingress


DNS = {("UDP", 53), ("TCP", 53)}


def test_network_policies_are_off_by_default(tmp_path: Path) -> None:
    assert "NetworkPolicy" not in run(_installed(tmp_path, {}))


@pytest.mark.parametrize("namespaces", [[], ["desk-a", "desk-b"]], ids=["all", "named"])
def test_network_policies_let_each_process_reach_nats_postgres_and_dns_alone(
        tmp_path: Path, namespaces: list[str]) -> None:
    nats_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}
    made = run(_installed(tmp_path, {
        "operator": {"watchNamespaces": namespaces},
        "networkPolicy": {"enabled": True, "monitoringNamespace": "observability",
                          "nats": {"to": [nats_peer]}, "postgres": {"ports": [6432]}}}))
    policies = made["NetworkPolicy"]
    assert set(policies) == {"tp-tradeplane-gateway", "tp-tradeplane-recorder",
                             "tp-tradeplane-auth", "tp-tradeplane-ledger",
                             "tp-tradeplane-engines"}
    expected = {"gateway": (DNS | {("TCP", 4222)}, "metrics"),
                "recorder": (DNS | {("TCP", 4222), ("TCP", 6432)}, "metrics"),
                "auth": (DNS | {("TCP", 4222), ("TCP", 6432)}, "metrics"),
                "ledger": (DNS | {("TCP", 4222)}, "health")}
    for component, (egress, port) in expected.items():
        policy = policies[f"tp-tradeplane-{component}"]
        workload = made.get("Deployment", {}).get(f"tp-tradeplane-{component}") or made[
            "StatefulSet"][f"tp-tradeplane-{component}"]
        pods = workload["spec"]["template"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods[
            "metadata"]["labels"].items()
        assert port in {item["name"] for item in pods["spec"]["containers"][0]["ports"]}
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert _rules(policy) == (egress, {port})
        [nats_rule] = [rule for rule in policy["spec"]["egress"]
                       if rule["ports"] == [{"port": 4222, "protocol": "TCP"}]]
        assert nats_rule["to"] == [nats_peer]
        assert policy["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]

    # The engines' policy (one per namespace the operator watches, here the last one
    # rendered under its name) selects the pods the operator makes, on their health port.
    engines = policies["tp-tradeplane-engines"]
    assert engines["metadata"]["namespace"] == (namespaces[-1] if namespaces else "exchange")
    assert _rules(engines) == (DNS | {("TCP", 4222), ("TCP", 6432)}, {"health"})
    market = Market.from_body({
        "metadata": {"name": "btc-usdt", "namespace": "desk-a", "uid": "1"},
        "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1", "lotSize": "0.001"}})
    pod = statefulset(market, Config())["spec"]["template"]
    assert engines["spec"]["podSelector"]["matchLabels"].items() <= pod[
        "metadata"]["labels"].items()
    assert "health" in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}


def test_an_engine_network_policy_in_every_watched_namespace(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with cluster(tmp_path) as emulated:
            result = await install(emulated, tmp_path, {
                "operator": {"watchNamespaces": ["desk-a", "desk-b"]},
                "networkPolicy": {"enabled": True}})
            assert result.get("status") == "deployed", result.get("error")
            return documents(result)

    engines = [obj["metadata"]["namespace"] for obj in run(scenario())
               if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"].endswith("engines")]
    assert engines == ["desk-a", "desk-b"]


PRODUCTION_VALUES = CHART / "examples" / "production-values.yaml"


def test_the_production_example_is_accepted_and_replicates_every_stream(
        tmp_path: Path) -> None:
    """examples/production-values.yaml (docs/production.md): the NATS of nats-values.yaml
    has a node for each stream replica, the schema accepts the values, and the release
    they install runs two of every process, and engines whose streams and buckets have
    three replicas, on different nodes."""
    values = yaml.safe_load(PRODUCTION_VALUES.read_text())
    nats = yaml.safe_load((CHART / "examples" / "nats-values.yaml").read_text())["config"]
    assert nats["jetstream"]["enabled"]
    assert nats["cluster"]["enabled"]
    assert nats["cluster"]["replicas"] >= values["nats"]["streamReplicas"] == 3
    schema = json.loads((CHART / "values.schema.json").read_text())
    merged = _merged(yaml.safe_load((CHART / "values.yaml").read_text()), values)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(merged)) == []

    made = run(_installed(tmp_path, values))
    for component in ("operator", "gateway", "recorder", "auth"):
        assert made["Deployment"][f"tp-tradeplane-{component}"]["spec"]["replicas"] == 2
    # The ledger: a leader and a standby of each shard, on different nodes, its streams
    # on three NATS replicas too.
    ledger = made["StatefulSet"]["tp-tradeplane-ledger"]
    assert ledger["spec"]["replicas"] == 2
    ledger_args = ledger["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ledger_args[ledger_args.index("--stream-replicas") + 1] == "3"
    assert ledger["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    operator = _pod(made, "operator")["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in operator["env"]}
    assert env["TRADEPLANE_STREAM_REPLICAS"] == "3"
    assert env["TRADEPLANE_NATS"] == "tls://nats:4222"
    assert env["TRADEPLANE_ANTI_AFFINITY"] == "required"

    # The engines the operator makes with that environment.
    config = Config.from_environment({**{name: value for name, value in env.items()
                                         if value is not None},
                                      "TRADEPLANE_POD_NAME": "tp-tradeplane-operator-0"})
    assert config.stream_replicas == 3
    market = Market.from_body({
        "metadata": {"name": "btc-usdt", "namespace": "exchange", "uid": "1"},
        "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1", "lotSize": "0.001"}})
    engine = statefulset(market, config)["spec"]["template"]["spec"]
    args = engine["containers"][0]["args"]
    assert args[args.index("--stream-replicas") + 1] == "3"
    assert engine["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
