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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
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


class EngineSettings(Model):
    """How the engine pods run."""

    image: str | None = Field(None, description="Engine image (default: the operator's). "
                              "It must be allowed by the operator's image policy "
                              "(docs/operator.md, image policy).")
    resources: ResourceRequirements | None = Field(
        None, description="Kubernetes resource requests and limits of each engine.")


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
