"""The chart's NATS credentials and TLS, installed into the emulator with the real Helm
library: every pod that talks to NATS reads its own identity's credentials file from the
credentials Secret, mounted read-only with only its own keys; no password is in any
environment variable; the CA bundle and client certificate are wired when given; and
the operator, configured by the chart, gives engine pods the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.test_chart import by_kind, documents, install
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane import security
from tradeplane_engine.access import Credentials
from tradeplane_operator.children import Market, statefulset
from tradeplane_operator.config import Config

SECRET_MODE = 0o440
"""Owner root, group the pods' fsGroup: the process reads the files, others do not."""
PODS = {
    "tp-tradeplane-gateway": ("gateway", {"gateway.json"}),
    "tp-tradeplane-recorder": ("recorder", {"recorder.json"}),
    "tp-tradeplane-operator": ("operator", {"operator.json"}),
    "tp-tradeplane-auth": ("auth", {"auth.json", "sys.json", "issuer.nk"}),
    "tp-tradeplane-ledger": ("ledger", {"ledger.json"}),
    "tp-tradeplane-test-trade": ("admin", {"admin.json"}),
}
"""Each pod that talks to NATS: its identity, and the only keys of the credentials
Secret it may mount."""


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    made = by_kind(objects)
    pods = {name: workload["spec"]["template"]["spec"]
            for kind in ("Deployment", "StatefulSet", "Job")
            for name, workload in made.get(kind, {}).items()}
    pods.update({name: pod["spec"] for name, pod in made.get("Pod", {}).items()})
    return pods


def files(pod: dict[str, Any]) -> dict[str, tuple[str, str, str, int]]:
    """Every file the pod's container sees from a volume: path -> (kind, name, key,
    mode); and a check that every mount is read-only."""
    container = pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    seen = {}
    for mount in container.get("volumeMounts", []):
        assert mount["readOnly"] is True, mount
        volume = volumes[mount["name"]]
        kind = "secret" if "secret" in volume else "configMap"
        source = volume[kind]
        for item in source["items"]:
            seen[f"{mount['mountPath']}/{item['path']}"] = (
                kind, source.get("secretName") or source["name"], item["key"],
                source["defaultMode"])
    return seen


def environment(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in pod["containers"][0]["env"]}


def credentials_keys(pod: dict[str, Any], secret: str) -> set[str]:
    return {key for kind, name, key, _ in files(pod).values()
            if kind == "secret" and name == secret}


async def _installed(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    async with cluster(tmp_path) as emulated:
        result = await install(emulated, tmp_path, values)
        assert result.get("status") == "deployed", result.get("error")
        return documents(result)


VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "a Secret of another name, CA from a Secret, client certificate": {
        "nats": {"credentials": {"existingSecret": "exchange-nats"},
                 "tls": {"caSecret": "nats-ca", "caKey": "bundle.pem",
                         "clientCertSecret": "tradeplane-tls"}}},
    "CA from a ConfigMap": {"nats": {"tls": {"caConfigMap": "nats-ca"}}},
}


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_every_pod_reads_its_own_credentials_from_a_mounted_file(
        tmp_path: Path, values: dict[str, Any]) -> None:
    objects = run(_installed(tmp_path, values))
    nats = values.get("nats", {})
    secret = nats.get("credentials", {}).get("existingSecret", "tradeplane-nats")
    tls = nats.get("tls", {})
    pods = _pods(objects)
    assert set(pods) == set(PODS)
    for name, (identity, keys) in PODS.items():
        pod = pods[name]
        env = environment(pod)
        seen = files(pod)
        assert env["TRADEPLANE_NATS"] == {"name": "TRADEPLANE_NATS",
                                          "value": "nats://nats:4222"}, name
        assert seen[env["TRADEPLANE_CREDENTIALS"]["value"]] == (
            "secret", secret, f"{identity}.json", SECRET_MODE), name
        # The pod cannot read another identity's password: no other key is mounted.
        assert credentials_keys(pod, secret) == keys, name
        assert all(mode == SECRET_MODE for kind, _, _, mode in seen.values()
                   if kind == "secret"), name
        security_context = pod["securityContext"]
        assert security_context["fsGroup"] == security_context["runAsGroup"] == 10001
        if tls.get("caSecret") or tls.get("caConfigMap"):
            kind = "secret" if tls.get("caSecret") else "configMap"
            assert seen[env["TRADEPLANE_NATS_CA"]["value"]][:3] == (
                kind, tls.get("caSecret") or tls["caConfigMap"],
                tls.get("caKey", "ca.crt")), name
        else:
            assert "TRADEPLANE_NATS_CA" not in env, name
        if tls.get("clientCertSecret"):
            for variable, key in (("TRADEPLANE_NATS_CERT", "tls.crt"),
                                  ("TRADEPLANE_NATS_KEY", "tls.key")):
                assert seen[env[variable]["value"]] == (
                    "secret", tls["clientCertSecret"], key, SECRET_MODE), name
        else:
            assert "TRADEPLANE_NATS_CERT" not in env, name
    auth = environment(pods["tp-tradeplane-auth"])
    auth_files = files(pods["tp-tradeplane-auth"])
    assert auth_files[auth["TRADEPLANE_AUTH_SYSTEM_CREDENTIALS"]["value"]][1:3] == (
        secret, "sys.json")
    assert auth_files[auth["TRADEPLANE_AUTH_ISSUER_SEED"]["value"]][1:3] == (
        secret, "issuer.nk")


def test_no_environment_variable_holds_a_secret(tmp_path: Path) -> None:
    """Real secrets from `tradeplane security init`: none of them, and no URL with
    credentials, is the value of any environment variable of any pod; the DSN comes by
    reference."""
    secrets = security.init(tmp_path / "secrets")
    passwords = [Credentials.load(secrets.credentials(identity)).password
                 for identity in security.IDENTITIES]
    seed = secrets.issuer_seed.read_text().strip()
    objects = run(_installed(tmp_path, {"nats": {"tls": {
        "caSecret": "nats-ca", "clientCertSecret": "tradeplane-tls"}}}))
    values = [item["value"] for pod in _pods(objects).values()
              for item in pod["containers"][0]["env"] if "value" in item]
    assert values
    for value in values:
        assert not any(password in value for password in passwords)
        assert seed not in value
        assert "@" not in value
    dsn = environment(_pods(objects)["tp-tradeplane-auth"])["TRADEPLANE_POSTGRES_DSN"]
    assert dsn == {"name": "TRADEPLANE_POSTGRES_DSN", "valueFrom": {"secretKeyRef": {
        "name": "tradeplane-postgres", "key": "dsn"}}}


def test_the_auth_service_deployment(tmp_path: Path) -> None:
    made = by_kind(run(_installed(tmp_path, {
        "auth": {"replicas": 3, "metricsPort": 9200}})))
    deployment = made["Deployment"]["tp-tradeplane-auth"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["auth", "--metrics-port", "9200"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9200,
                                   "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert made["Service"]["tp-tradeplane-auth"]["spec"]["ports"][0]["port"] == 9200


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_the_operator_gives_engine_pods_their_credentials_and_tls(
        tmp_path: Path, values: dict[str, Any]) -> None:
    """The operator's settings as the chart sets them, read as the operator reads them,
    make engine pods that mount the engine's key alone (from the Secret of that name in
    the Market's namespace) and the same CA and client certificate as the chart's pods."""
    pods = _pods(run(_installed(tmp_path, values)))
    operator_env = {name: item["value"] for name, item in
                    environment(pods["tp-tradeplane-operator"]).items() if "value" in item}
    config = Config.from_environment(operator_env)
    market = Market.from_body({"metadata": {"name": "btc-usdt", "namespace": "desk-a",
                                            "uid": "u1"},
                               "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1",
                                        "lotSize": "0.001"}})
    engine = statefulset(market, config)["spec"]["template"]["spec"]
    gateway = pods["tp-tradeplane-gateway"]
    secret = values.get("nats", {}).get("credentials", {}).get(
        "existingSecret", "tradeplane-nats")
    engine_env, engine_files = environment(engine), files(engine)
    assert engine_files[engine_env["TRADEPLANE_CREDENTIALS"]["value"]] == (
        "secret", secret, "engine.json", SECRET_MODE)
    assert credentials_keys(engine, secret) == {"engine.json"}
    gateway_env, gateway_files = environment(gateway), files(gateway)
    for variable in ("TRADEPLANE_NATS", "TRADEPLANE_NATS_CA", "TRADEPLANE_NATS_CERT",
                     "TRADEPLANE_NATS_KEY"):
        assert (variable in engine_env) == (variable in gateway_env), variable
        if variable in engine_env and variable != "TRADEPLANE_NATS":
            # The same file from the same source: the engines' CA is the gateways'.
            assert engine_files[engine_env[variable]["value"]][:3] == gateway_files[
                gateway_env[variable]["value"]][:3], variable
    assert engine["securityContext"]["fsGroup"] == 10001


def test_without_credentials_nothing_is_mounted(tmp_path: Path) -> None:
    pods = _pods(run(_installed(tmp_path, {"nats": {"credentials": {"existingSecret": ""}},
                                           "auth": {"enabled": False}})))
    assert "tp-tradeplane-auth" not in pods
    for name, pod in pods.items():
        assert "TRADEPLANE_CREDENTIALS" not in environment(pod), name
        assert not pod.get("volumes"), name
    operator_env = environment(pods["tp-tradeplane-operator"])
    assert "TRADEPLANE_ENGINE_CREDENTIALS_SECRET" not in operator_env
