"""The chart's deletion protection at admission: a ValidatingAdmissionPolicy and its
binding that deny DELETE of a protected Market, installed on Kubernetes 1.30 and newer.

The emulated API server stores the policy but does not enforce it (it has no admission),
so its CEL is evaluated here with cel-python against the Markets it must refuse and
allow, as the API server would with the stored Market as ``oldObject``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel

from tests.chart.test_chart import by_kind, documents, install
from tests.support.exchange import run
from tests.support.kube import cluster

POLICY = "tp-tradeplane-market-deletion-protection"


def installed(tmp_path: Path, values: dict[str, Any],
              kubernetes_minor: int = 33) -> dict[str, dict[str, dict[str, Any]]]:
    async def scenario() -> dict[str, dict[str, dict[str, Any]]]:
        async with cluster(tmp_path, kubernetes_minor=kubernetes_minor) as emulated:
            result = await install(emulated, tmp_path, values)
            assert result.get("status") == "deployed", result.get("error")
            made = by_kind(documents(result))
            stored = {kind: set(emulated.objects(plural, None)) for kind, plural in (
                ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
                ("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"))}
            for kind, names in stored.items():
                assert names == set(made.get(kind, {})), kind  # Helm made what it rendered
            return made
    return run(scenario())


def market(annotations: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "btc-usdt", "namespace": "trading"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "tradeplane.dev/v1alpha1", "kind": "Market", "metadata": metadata,
            "spec": {"base": "BTC", "quote": "USDT"}}


def evaluate(expression: str, old: dict[str, Any]) -> Any:
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    return program.evaluate({"oldObject": json_to_cel(old), "object": None})


def test_the_policy_denies_deleting_a_protected_market(tmp_path: Path) -> None:
    made = installed(tmp_path, {})
    policy = made["ValidatingAdmissionPolicy"][POLICY]
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["tradeplane.dev"], "apiVersions": ["*"], "operations": ["DELETE"],
        "resources": ["markets"]}]
    binding = made["ValidatingAdmissionPolicyBinding"][POLICY]
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    assert binding["metadata"]["labels"]["app.kubernetes.io/instance"] == "tp"

    [validation] = spec["validations"]
    for given, allowed in ((None, False), ({}, False),
                                 ({"other": "x"}, False),
                                 ({"tradeplane.dev/deletion-protection": "true"}, False),
                                 ({"tradeplane.dev/deletion-protection": "False"}, False),
                                 ({"tradeplane.dev/deletion-protection": "false"}, True)):
        assert bool(evaluate(validation["expression"], market(given))) is allowed, \
            given
    message = str(evaluate(validation["messageExpression"], market(None)))
    assert "deletion protection is on for Market btc-usdt" in message
    assert ("kubectl annotate market btc-usdt -n trading "
            "tradeplane.dev/deletion-protection=false --overwrite") in message


@pytest.mark.parametrize(("values", "kubernetes_minor"), [
    ({"deletionProtection": {"admissionPolicy": False}}, 33),
    ({}, 29),  # admissionregistration.k8s.io/v1 policies are served from 1.30
], ids=["turned off", "Kubernetes 1.29"])
def test_the_policy_is_left_out(tmp_path: Path, values: dict[str, Any],
                                kubernetes_minor: int) -> None:
    made = installed(tmp_path, values, kubernetes_minor)
    assert "ValidatingAdmissionPolicy" not in made
    assert "ValidatingAdmissionPolicyBinding" not in made


def test_the_helm_test_market_may_be_deleted(tmp_path: Path) -> None:
    """Helm deletes the test's Market after the test: the policy must let it go."""
    made = installed(tmp_path, {})
    [test_market] = made["Market"].values()
    assert test_market["metadata"]["annotations"][
        "tradeplane.dev/deletion-protection"] == "false"
