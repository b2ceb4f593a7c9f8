"""The Market custom resource, defined once as a model; its CRD is generated from it.

``python -m tradeplane_operator.crd`` prints the CustomResourceDefinition that the
chart ships in ``charts/tradeplane/crds/``; a test fails when the checked-in file and
this model disagree. Field names are camelCase in Kubernetes and snake_case here.

What a structural schema cannot say is said in CEL (``x-kubernetes-validations``):
sizes must be positive, not only well-formed decimals; base and quote never change
after creation; a market that trades keeps a standby (replicas of at least 2 unless
halted).
"""

from __future__ import annotations

import sys
from copy import deepcopy
from enum import StrEnum
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tradeplane_operator import quantity

GROUP = "tradeplane.dev"
VERSION = "v1alpha1"
KIND = "Market"
PLURAL = "markets"

DECIMAL = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$"
"""A plain non-negative decimal string: no sign, exponent or spaces."""
POSITIVE = "!self.matches('^0+(\\\\.0+)?$')"
"""CEL: a decimal string that is not zero."""


IMMUTABLE_GRID = ("the price and quantity grid is immutable: resting orders are on it "
                  "(make a new market instead)")
IMMUTABLE_RULES = ("the matching rules are immutable: every replica and every replay must "
                   "apply the same rules (make a new market instead)")
NAME_RULE = ("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') "
             "&& size(self.metadata.name) <= 40")
NAME_MESSAGE = ("the name must be a DNS label of at most 40 characters: it names the "
                "market's streams, subjects and pods")


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}
                                         for rule, message in rules]}


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="forbid", use_enum_values=True)


class TradingMode(StrEnum):
    OPEN = "open"
    POST_ONLY = "postOnly"
    CANCEL_ONLY = "cancelOnly"
    HALTED = "halted"


class Fees(Model):
    """Trading fees in basis points of the traded value."""

    maker_bps: int = Field(0, ge=-100, le=1000, description="Maker fee in basis points "
                           "(negative: a rebate).")
    taker_bps: int = Field(0, ge=0, le=1000, description="Taker fee in basis points.")


def _quantity(value: int | str) -> int | str:
    quantity.parse(value)  # a QuantityError is a ValueError: pydantic reports it
    return value


Quantity = Annotated[int | str, AfterValidator(_quantity), WithJsonSchema(
    {"x-kubernetes-int-or-string": True, "pattern": quantity.PATTERN})]
"""A Kubernetes quantity (``resource.Quantity``): ``"500m"``, ``"1.5"``, ``"1Gi"``, ``2``."""


class ResourceRequirements(Model):
    """Compute resources of a container, as Kubernetes' ``ResourceRequirements`` (without
    ``claims``: engines use no dynamic resources)."""

    requests: dict[str, Quantity] | None = Field(
        None, description="The least each engine gets (scheduling), by resource name.")
    limits: dict[str, Quantity] | None = Field(
        None, description="The most each engine may use, by resource name.")


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (a Secret's, a PriorityClass's)."""


class AntiAffinity(StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(Model):
    """A taint the engine pods tolerate (as in a pod's spec)."""

    model_config = ConfigDict(json_schema_extra=_rules(
        ("(has(self.key) && self.key != '') || (has(self.operator) && "
         "self.operator == 'Exists')",
         "a toleration without a key must have operator Exists (it tolerates every taint)"),
        ("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || "
         "self.value == ''", "a toleration with operator Exists takes no value"),
        ("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "tolerationSeconds is for effect NoExecute only")))

    key: str | None = Field(None, max_length=316, description="The taint's key; empty: "
                            "every key (with operator Exists).")
    operator: TolerationOperator | None = Field(None, description="Exists or Equal "
                                                "(written as Equal when omitted).")
    value: str | None = Field(None, max_length=63, description="The taint's value (Equal).")
    effect: TaintEffect | None = Field(None, description="The taint effect tolerated; "
                                       "empty: every effect.")
    toleration_seconds: int | None = Field(None, ge=0, description="NoExecute: how long "
                                           "the pod stays bound once tainted.")

    @model_validator(mode="after")
    def _as_kubernetes_takes_it(self) -> Toleration:
        """The CEL rules above, for tolerations the operator's settings give."""
        if not self.key and self.operator != TolerationOperator.EXISTS:
            raise ValueError("a toleration without a key must have operator Exists")
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds is for effect NoExecute only")
        return self


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class SelectorRequirement(Model):
    """A requirement on one label."""

    key: str = Field(max_length=316)
    operator: SelectorOperator
    values: list[str] | None = Field(None, max_length=64)


class LabelSelector(Model):
    """The pods a constraint counts (a Kubernetes label selector)."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[SelectorRequirement] | None = Field(None, max_length=16)


class WhenUnsatisfiable(StrEnum):
    SCHEDULE_ANYWAY = "ScheduleAnyway"
    DO_NOT_SCHEDULE = "DoNotSchedule"


class TopologySpreadConstraint(Model):
    """How the market's engine pods spread over a topology (as in a pod's spec)."""

    model_config = ConfigDict(json_schema_extra=_rules(
        ("!has(self.minDomains) || (has(self.whenUnsatisfiable) && "
         "self.whenUnsatisfiable == 'DoNotSchedule')",
         "minDomains is for whenUnsatisfiable DoNotSchedule only")))

    max_skew: int = Field(1, ge=1, description="The largest difference in engine pods "
                          "between two domains.")
    topology_key: str = Field(min_length=1, max_length=316, description="The node label "
                              "whose values are the domains, e.g. topology.kubernetes.io/zone.")
    when_unsatisfiable: WhenUnsatisfiable = Field(
        WhenUnsatisfiable.SCHEDULE_ANYWAY, description="ScheduleAnyway (a preference) or "
        "DoNotSchedule (a rule).")
    label_selector: LabelSelector | None = Field(None, description="The pods counted; "
                                                 "omitted: the market's engine pods.")
    min_domains: int | None = Field(None, ge=1, description="DoNotSchedule: the fewest "
                                    "domains to spread over.")

    @model_validator(mode="after")
    def _as_kubernetes_takes_it(self) -> TopologySpreadConstraint:
        if self.min_domains is not None and (
                self.when_unsatisfiable != WhenUnsatisfiable.DO_NOT_SCHEDULE):
            raise ValueError("minDomains is for whenUnsatisfiable DoNotSchedule only")
        return self


class SecretReference(Model):
    """A Secret in the Market's namespace, by name."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)


class PodMetadata(Model):
    """Labels and annotations added to each engine pod; the operator's own labels win."""

    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PodTemplate(Model):
    """Where and how the engine pods run; a field given replaces the operator's default."""

    # Field by field: an empty list replaces the default with none, an omitted field
    # keeps the operator's (children.placement).

    metadata: PodMetadata | None = None
    node_selector: dict[str, str] | None = Field(None, description="Nodes the engine pods "
                                                 "may run on, by label.")
    tolerations: list[Toleration] | None = Field(None, max_length=32,
                                                 description="Taints the pods tolerate.")
    topology_spread_constraints: list[TopologySpreadConstraint] | None = Field(
        None, max_length=8, description="Spread of the engine pods (default: the "
        "operator's, over zones).")
    priority_class_name: str | None = Field(None, max_length=253,
                                            pattern=f"^$|{DNS_SUBDOMAIN}",
                                            description="The pods' PriorityClass; empty: "
                                            "none.")
    image_pull_secrets: list[SecretReference] | None = Field(
        None, max_length=16, description="Secrets, in the Market's namespace, to pull the "
        "engine image with.")
    anti_affinity: AntiAffinity | None = Field(
        None, description="required: never two engines of the market on one node; "
        "preferred: spread when the cluster can (a one-node cluster). Default: the "
        "operator's.")


class EngineTemplate(Model):
    """Overrides of what the operator makes for the engine pods."""

    pod: PodTemplate | None = None


class EngineSettings(Model):
    """How the engine pods run."""

    image: str | None = Field(None, description="Engine image (default: the operator's). "
                              "It must be allowed by the operator's image policy "
                              "(docs/operator.md, image policy).")
    resources: ResourceRequirements | None = Field(
        None, description="Kubernetes resource requests and limits of each engine.")
    template: EngineTemplate | None = Field(None, description="Pod-template overrides: "
                                            "placement, priority, pull secrets, metadata.")


class MarketSpec(Model):
    """A market: what is traded, on which grid, and how its engines run."""

    base: str = Field(description="The asset bought and sold, e.g. BTC. Immutable.",
                      pattern=r"^[A-Z0-9]{1,16}$",
                      json_schema_extra=_rules(("self == oldSelf", "base is immutable")))
    quote: str = Field(description="The asset prices are in, e.g. USDT. Immutable.",
                       pattern=r"^[A-Z0-9]{1,16}$",
                       json_schema_extra=_rules(("self == oldSelf", "quote is immutable")))
    tick_size: str = Field(description="Price increment, a positive decimal string. "
                           "Immutable.",
                           pattern=DECIMAL, max_length=32,
                           json_schema_extra=_rules((POSITIVE, "tickSize must be positive"),
                                                    ("self == oldSelf", IMMUTABLE_GRID)))
    lot_size: str = Field(description="Quantity increment, a positive decimal string. "
                          "Immutable.",
                          pattern=DECIMAL, max_length=32,
                          json_schema_extra=_rules((POSITIVE, "lotSize must be positive"),
                                                   ("self == oldSelf", IMMUTABLE_GRID)))
    min_notional: str = Field("0", description="Smallest order value (price × quantity). "
                              "Immutable.", pattern=DECIMAL, max_length=32,
                              json_schema_extra=_rules(("self == oldSelf", IMMUTABLE_RULES)))
    price_band: str = Field("0", description="Largest distance of a limit price from the "
                            "last trade, in percent; 0 for none. Immutable.", pattern=DECIMAL,
                            max_length=32,
                            json_schema_extra=_rules(("self == oldSelf", IMMUTABLE_RULES)))
    reference_price: str | None = Field(None, description="Reference for the price band "
                                        "until the first trade. Immutable.", pattern=DECIMAL,
                                        max_length=32, json_schema_extra=_rules(
                                            ("self == oldSelf", IMMUTABLE_RULES)))
    trading_mode: TradingMode = Field(TradingMode.OPEN, description="What the market "
                                      "accepts; a change is a sequenced admin command.")
    replicas: int = Field(2, ge=1, le=7, description="Engine replicas: a leader and standbys.")
    fees: Fees = Field(default_factory=lambda: Fees())
    snapshot_every: int = Field(100_000, ge=1_000, le=100_000_000,
                                description="Commands between two engine snapshots.")
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())


SPEC_RULES = [
    ("!has(self.referencePrice) || !self.referencePrice.matches('^0+(\\\\.0+)?$')",
     "referencePrice must be positive"),
    ("self.tradingMode == 'halted' || self.replicas >= 2",
     "a market that trades needs a standby: replicas must be at least 2 unless halted"),
]


def _structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's JSON Schema as a Kubernetes structural schema: references inlined,
    optional values unwrapped, titles dropped."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[1]]
        merged = {**deepcopy(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _structural({**options[0], **rest}, definitions)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title",):
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # not allowed in a structural schema; unknown fields are pruned
        if key == "properties":
            out[key] = {name: _structural(child, definitions) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, definitions)
        elif key == "enum":
            out["type"] = "string"
            out[key] = value
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    return out


def spec_schema() -> dict[str, Any]:
    schema = _schema(MarketSpec)
    schema["x-kubernetes-validations"] = [{"rule": rule, "message": message}
                                          for rule, message in SPEC_RULES]
    return schema


CONDITION_TYPE = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
"""``metav1.Condition``'s pattern of a condition's type (an optional DNS prefix)."""
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
"""``metav1.Condition``'s pattern of a reason: CamelCase, a machine-readable word."""
MAX_MESSAGE = 32768


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """One aspect of the Market's state, as Kubernetes' metav1.Condition."""

    type: str = Field(description="What the condition is about, in CamelCase.",
                      pattern=CONDITION_TYPE, max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="The Market's generation the condition was computed for.",
        json_schema_extra={"format": "int64"})
    last_transition_time: str = Field(description="When the status last changed.",
                                      json_schema_extra={"format": "date-time"})
    reason: str = Field(description="Why, as one CamelCase word.", min_length=1,
                        max_length=1024, pattern=CONDITION_REASON)
    message: str = Field(description="Why, for people.", max_length=MAX_MESSAGE)


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    DEGRADED = "Degraded"
    UNAVAILABLE = "Unavailable"
    TERMINATING = "Terminating"


# The CRD keeps no unknown fields in the status (a real API server prunes them without a
# word), so a field written but not listed here would silently never be stored; a test
# checks that every status the operator writes validates against this model. kopf keeps
# its own state in annotations, never in the status (storage.py).
class MarketStatus(Model):
    """What the operator and the engine replicas report."""

    phase: Phase | None = Field(None, description="Pending, Running, Degraded, "
                                "Unavailable or Terminating (the conditions say why).")
    leader: str | None = Field(None, description="The replica that leads.")
    last_leader: str | None = Field(None, description="The replica that led last (kept "
                                    "while no replica leads).")
    trading_mode: str | None = Field(None, description="The mode the leader trades in (the "
                                     "spec's once its command has been applied).")
    epoch: int | None = Field(None, description="The leader's lease epoch.")
    last_sequence: int | None = Field(None, description="The last command applied.")
    ready_replicas: int | None = Field(None, description="Replicas caught up with the "
                                       "command stream.")
    replicas: int | None = Field(None, description="Replicas running (reporting).")
    selector: str | None = Field(None, description="The engine pods' label selector (for "
                                 "the scale subresource).")
    failovers: int | None = Field(None, description="Unplanned leader changes.")
    switchovers: int | None = Field(None, description="Planned leader changes.")
    last_failover_time: str | None = Field(None, description="When the last failover "
                                           "happened.",
                                           json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, description="The generation the "
                                            "operator last applied.")
    retirement: dict[str, int] | None = Field(None, description="Deletion: the command "
                                              "sequences of the final cancelOnly and "
                                              "cancelAll.")
    replica_lag: dict[str, int] | None = Field(None, description="Commands each replica "
                                               "is behind, by replica.")
    conditions: list[Condition] | None = Field(
        None, description="Ready, Available, Progressing, Degraded; Accepted and Retiring "
        "when they apply.",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]})


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    schema = _structural(raw, raw.get("$defs", {}))
    schema.pop("$defs", None)
    return schema


def status_schema() -> dict[str, Any]:
    return _schema(MarketStatus)


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Mode", "type": "string", "jsonPath": ".status.tradingMode",
     "description": "The mode the leader trades in."},
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Serving, every replica caught up, trading in the spec's mode."},
    {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
    {"name": "Sequence", "type": "integer", "jsonPath": ".status.lastSequence"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Spec Mode", "type": "string", "jsonPath": ".spec.tradingMode", "priority": 1,
     "description": "The mode the spec asks for."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
     "priority": 1, "description": "Replicas caught up with the command stream."},
]
"""``kubectl get markets``; ``-o wide`` adds the priority-1 columns."""


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of Market."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "plural": PLURAL, "singular": "market",
                      "shortNames": ["mkt"], "listKind": "MarketList",
                      # Not "all": `kubectl get all` lists what may be deleted with
                      # `kubectl delete all`, and deleting a Market retires it.
                      "categories": ["tradeplane"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "required": ["spec"],
                    "x-kubernetes-validations": [{"rule": NAME_RULE,
                                                  "message": NAME_MESSAGE}],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(), "status": status_schema(),
                    },
                }},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def render() -> str:
    header = ("# Generated from operator/tradeplane_operator/crd.py by\n"
              "# `python -m tradeplane_operator.crd`; do not edit (a test compares them).\n")
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
