"""The Market CRD: generated from the model, and its schema (OpenAPI and CEL rules)
accepts every example Market and refuses invalid ones, each for its stated reason."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pydantic
import pytest
import yaml
from celpy.adapter import json_to_cel

from tradeplane_operator.crd import MarketSpec, crd, render

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "charts" / "tradeplane" / "crds" / "markets.tradeplane.dev.yaml"
EXAMPLES = sorted((ROOT / "examples" / "markets").glob("*.yaml"))


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


def rule_failures(schema: dict[str, Any], value: Any, old: Any = None) -> list[str]:
    """The messages of the CEL rules ``value`` breaks, as the API server evaluates them
    (transition rules, which use ``oldSelf``, only on updates)."""
    failures = []
    environment = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue
        program = environment.program(environment.compile(rule["rule"]))
        activation = {"self": json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = json_to_cel(old)
        if not bool(program.evaluate(activation)):
            failures.append(rule["message"])
    for name, child in schema.get("properties", {}).items():
        if isinstance(value, dict) and name in value:
            failures += rule_failures(child, value[name],
                                      old.get(name) if isinstance(old, dict) else None)
    if "items" in schema and isinstance(value, list):
        for item in value:  # rules on list items (tolerations) have no oldSelf here
            failures += rule_failures(schema["items"], item)
    return failures


def as_json_schema(schema: Any) -> Any:
    """The schema as plain JSON Schema: ``x-kubernetes-int-or-string`` (which the API
    server enforces) says ``type: [integer, string]``."""
    if isinstance(schema, list):
        return [as_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    plain = {key: as_json_schema(value) for key, value in schema.items()}
    if plain.get("x-kubernetes-int-or-string"):
        plain["type"] = ["integer", "string"]
    return plain


def problems(spec: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    schema = spec_schema()
    found = [error.message for error in
             jsonschema.Draft202012Validator(as_json_schema(schema)).iter_errors(spec)]
    # As the API server does, CEL rules judge only values of the right shape.
    return found or rule_failures(schema, spec, old)


def test_the_checked_in_crd_is_the_model() -> None:
    assert CHECKED_IN.read_text() == render(), (
        "run `python -m tradeplane_operator.crd > " + str(CHECKED_IN.relative_to(ROOT)) + "`")


def test_crd_names_subresources_and_columns() -> None:
    definition = crd()
    assert definition["metadata"]["name"] == "markets.tradeplane.dev"
    assert definition["spec"]["names"]["shortNames"] == ["mkt"]
    version = definition["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert set(version["subresources"]) == {"status", "scale"}
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert [name for name, column in columns.items() if not column.get("priority")] == [
        "Mode", "Ready", "Leader", "Sequence", "Age"]
    assert columns["Mode"]["jsonPath"] == ".status.tradingMode"  # traded, not asked for
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    # `kubectl get tradeplane` lists Markets; `kubectl get all` (and `delete all`) not.
    assert definition["spec"]["names"]["categories"] == ["tradeplane"]


def status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["status"]  # type: ignore[no-any-return]


def walk(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [schema]
    for child in [*schema.get("properties", {}).values(), schema.get("items"),
                  schema.get("additionalProperties")]:
        if isinstance(child, dict):
            found += walk(child)
    return found


def test_no_part_of_the_schema_keeps_unknown_fields() -> None:
    """A real API server prunes what a structural schema does not list: nothing is kept
    unchecked, and what the operator writes must be listed (test_parts checks that)."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert [node for node in walk(schema)
            if node.get("x-kubernetes-preserve-unknown-fields")] == []


def test_conditions_are_a_list_map_by_type() -> None:
    conditions = status_schema()["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type", "status", "lastTransitionTime", "reason", "message"}


GOOD_CONDITION: dict[str, Any] = {
    "type": "Ready", "status": "True", "observedGeneration": 3,
    "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "AllReplicasReady",
    "message": "2/2 replicas ready, trading open"}

CONDITIONS = [
    ("as written", {}, None),
    ("no observed generation", {"observedGeneration": None}, None),
    ("a domain-prefixed type", {"type": "tradeplane.dev/Custom"}, None),
    ("reason with colon and comma", {"reason": "A:b,C_1"}, None),
    ("the longest message", {"message": "x" * 32768}, None),
    ("status not an enum value", {"status": "true"}, "is not one of"),
    ("reason with a space", {"reason": "Not Ready"}, "does not match"),
    ("reason starting with a digit", {"reason": "1Ready"}, "does not match"),
    ("empty reason", {"reason": ""}, "does not match"),
    ("message too long", {"message": "x" * 32769}, "is too long"),
    ("negative generation", {"observedGeneration": -1}, "less than the minimum"),
    ("no transition time", {"lastTransitionTime": None}, "is a required property"),
    ("no reason", {"reason": None}, "is a required property"),
]


@pytest.mark.parametrize(("change", "reason"), [case[1:] for case in CONDITIONS],
                         ids=[case[0] for case in CONDITIONS])
def test_conditions_are_checked_as_metav1_conditions(change: dict[str, Any],
                                                     reason: str | None) -> None:
    condition = {key: value for key, value in {**GOOD_CONDITION, **change}.items()
                 if value is not None}
    found = [error.message for error in jsonschema.Draft202012Validator(
        status_schema()).iter_errors({"conditions": [condition]})]
    if reason is None:
        assert found == []
    else:
        assert any(reason in message for message in found), found


RESOURCES = [
    ("strings", {"requests": {"cpu": "1.5", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
     None),
    ("whole numbers", {"requests": {"cpu": 2}}, None),
    ("exponents", {"limits": {"cpu": "1e3", "memory": "1.5e9"}}, None),
    ("an extended resource", {"limits": {"example.com/fpga": "1"}}, None),
    ("a word", {"requests": {"cpu": "lots"}}, "does not match"),
    ("an exponent and a suffix", {"limits": {"cpu": "1e3m"}}, "does not match"),
    ("a space", {"requests": {"memory": "1 Gi"}}, "does not match"),
    ("lowercase binary", {"requests": {"memory": "1gi"}}, "does not match"),
    ("a map, not a quantity", {"requests": {"cpu": {"value": 1}}}, "is not of type"),
    ("a fraction as a number", {"requests": {"cpu": 1.5}}, "is not of type"),
    ("an unknown section", {"request": {"cpu": "1"}}, "Additional properties"),
]


@pytest.mark.parametrize(("resources", "reason"), [case[1:] for case in RESOURCES],
                         ids=[case[0] for case in RESOURCES])
def test_engine_resources_are_resource_requirements(resources: dict[str, Any],
                                                    reason: str | None) -> None:
    spec = {**VALID, "engine": {"resources": resources}}
    found = problems(spec)
    model: list[str] = []
    try:
        MarketSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        model = [str(exc)]
    if reason is None:
        assert (found, model) == ([], [])
    elif reason == "Additional properties":
        # The API server prunes an unknown key (the schema drops additionalProperties:
        # false); the operator's model, which never sees it there, refuses it.
        assert found == []
        assert model
    else:
        assert any(reason in message for message in found), found
        assert model, "the operator's model accepts what the CRD refuses"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_market_is_accepted(path: Path) -> None:
    assert problems(yaml.safe_load(path.read_text())["spec"]) == []


VALID: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "markets" / "sol-usdt.yaml")
                                       .read_text())["spec"]

INVALID = [
    ("zero tick", {"tickSize": "0"}, "tickSize must be positive"),
    ("zero lot written long", {"lotSize": "0.000"}, "lotSize must be positive"),
    ("negative tick", {"tickSize": "-0.01"}, "does not match"),
    ("exponent", {"lotSize": "1e-3"}, "does not match"),
    ("a number, not a string", {"tickSize": 0.01}, "is not of type 'string'"),
    ("lowercase symbol", {"base": "sol"}, "does not match"),
    ("unknown mode", {"tradingMode": "paused"}, "is not one of"),
    ("no standby while open", {"replicas": 1}, "needs a standby"),
    ("too many replicas", {"replicas": 9}, "is greater than the maximum"),
    ("snapshots too often", {"snapshotEvery": 10}, "is less than the minimum"),
    ("zero reference price", {"referencePrice": "0"}, "referencePrice must be positive"),
    ("anti-affinity sometimes", {"engine": {"template": {"pod": {"antiAffinity": "sometimes"}}}},
     "is not one of"),
    ("toleration operator", {"engine": {"template": {"pod": {"tolerations": [
        {"key": "a", "operator": "Is"}]}}}}, "is not one of"),
    ("toleration effect", {"engine": {"template": {"pod": {"tolerations": [
        {"key": "a", "effect": "NoRun"}]}}}}, "is not one of"),
    ("toleration without a key", {"engine": {"template": {"pod": {"tolerations": [
        {"value": "x"}]}}}}, "a toleration without a key must have operator Exists"),
    ("toleration Exists with a value", {"engine": {"template": {"pod": {"tolerations": [
        {"key": "a", "operator": "Exists", "value": "x"}]}}}},
     "a toleration with operator Exists takes no value"),
    ("toleration seconds without NoExecute", {"engine": {"template": {"pod": {"tolerations": [
        {"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5}]}}}},
     "tolerationSeconds is for effect NoExecute only"),
    ("spread without a key", {"engine": {"template": {"pod": {"topologySpreadConstraints": [
        {"maxSkew": 1}]}}}}, "'topologyKey' is a required property"),
    ("spread mode", {"engine": {"template": {"pod": {"topologySpreadConstraints": [
        {"topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]}}}}, "is not one of"),
    ("spread skew zero", {"engine": {"template": {"pod": {"topologySpreadConstraints": [
        {"topologyKey": "zone", "maxSkew": 0}]}}}}, "is less than the minimum"),
    ("minDomains preferred", {"engine": {"template": {"pod": {"topologySpreadConstraints": [
        {"topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}]}}}},
     "minDomains is for whenUnsatisfiable DoNotSchedule only"),
    ("pull secrets as names", {"engine": {"template": {"pod": {"imagePullSecrets": ["r"]}}}},
     "is not of type 'object'"),
    ("priority class name", {"engine": {"template": {"pod": {
        "priorityClassName": "High Priority"}}}}, "does not match"),
    ("node selector value", {"engine": {"template": {"pod": {"nodeSelector": {"pool": 1}}}}},
     "is not of type 'string'"),
]


@pytest.mark.parametrize(("change", "reason"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_markets_are_refused_for_their_reason(change: dict[str, Any],
                                                      reason: str) -> None:
    found = problems({**VALID, **change})
    assert any(reason in message for message in found), found


PLACED = {"engine": {"template": {"pod": {
    "metadata": {"labels": {"team": "exchange"}, "annotations": {"note": "x"}},
    "nodeSelector": {"pool": "exchange"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "exchange",
                     "effect": "NoSchedule"},
                    {"operator": "Exists"},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                     "effect": "NoExecute", "tolerationSeconds": 30}],
    "topologySpreadConstraints": [
        {"topologyKey": "topology.kubernetes.io/zone"},
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
         "whenUnsatisfiable": "DoNotSchedule", "minDomains": 2,
         "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                                 "values": ["exchange"]}]}}],
    "priorityClassName": "exchange-critical",
    "imagePullSecrets": [{"name": "regcred"}],
    "antiAffinity": "preferred"}}}}


def test_an_engine_pod_template_is_accepted() -> None:
    assert problems({**VALID, **PLACED}) == []
    assert problems({**VALID, "engine": {"template": {}}}) == []


def test_the_template_schema_is_structural_without_unknown_fields() -> None:
    """Every level of the template says its type, and none keeps unknown fields: the API
    server prunes what the model does not know."""
    def walk(schema: dict[str, Any], path: str) -> None:
        assert "type" in schema, path
        assert "x-kubernetes-preserve-unknown-fields" not in schema, path
        for name, child in schema.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key], f"{path}.{key}")
    walk(spec_schema()["properties"]["engine"]["properties"]["template"], "template")


def test_a_halted_market_may_run_one_replica() -> None:
    assert problems({**VALID, "replicas": 1, "tradingMode": "halted"}) == []


def test_base_and_quote_are_immutable() -> None:
    changed = deepcopy(VALID)
    changed["base"] = "ETH"
    assert "base is immutable" in problems(changed, old=VALID)
    assert problems({**VALID, "tradingMode": "halted"}, old=VALID) == []


@pytest.mark.parametrize("field", ["tickSize", "lotSize", "minNotional", "priceBand",
                                   "referencePrice"])
def test_the_grid_and_matching_rules_are_immutable(field: str) -> None:
    changed = {**VALID, field: "7"}
    assert any("immutable" in message for message in problems(changed, old=VALID))


@pytest.mark.parametrize(("name", "accepted"), [
    ("btc-usdt", True), ("a", True), ("x" * 40, True), ("x" * 41, False),
    ("BTC-USDT", False), ("btc.usdt", False), ("-btc", False), ("btc-", False),
])
def test_a_market_name_must_fit_streams_subjects_and_pods(name: str, accepted: bool) -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    failures = rule_failures({"x-kubernetes-validations": schema["x-kubernetes-validations"]},
                             {"metadata": {"name": name}, "spec": VALID})
    assert (failures == []) is accepted, failures
