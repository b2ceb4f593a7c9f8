"""The chart's monitoring: the engines' PodMonitor and the Grafana dashboard's ConfigMap,
installed into the emulator with the real Helm library; and the dashboard and
docs/observability.md against the metrics the processes really register."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.chart.test_chart import (
    CHART,
    CRDS,
    OWN_KINDS,
    ROOT,
    SERVICE_MONITORS,
    _merged,
    by_kind,
    documents,
    install,
    validate,
)
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane_operator.children import Market, statefulset
from tradeplane_operator.config import Config
from tradeplane_operator.kube import KubeApi

POD_MONITORS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "PodMonitor", "plural": "podmonitors"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object"}}}]},
}
DASHBOARD = CHART / "dashboards" / "tradeplane.json"
MONITORING = {"podMonitor": {"enabled": True, "labels": {"release": "prom"}},
              "grafanaDashboard": {"enabled": True}}


async def _installed(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    async with cluster(tmp_path) as emulated:
        kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
        for definition in (SERVICE_MONITORS, POD_MONITORS):
            await kube.create(CRDS, None, definition)
        await kube.close()
        result = await install(emulated, tmp_path, values)
        assert result.get("status") == "deployed", result.get("error")
        return documents(result)


@pytest.mark.parametrize("namespaces", [[], ["desk-a", "desk-b"]], ids=["all", "named"])
def test_the_pod_monitor_and_the_dashboard(tmp_path: Path, namespaces: list[str]) -> None:
    objects = run(_installed(tmp_path, {"monitoring": MONITORING,
                                        "operator": {"watchNamespaces": namespaces}}))
    for obj in objects:
        if obj["apiVersion"].split("/")[0] not in OWN_KINDS:
            validate(obj)
    made = by_kind(objects)

    monitor = made["PodMonitor"]["tp-tradeplane-engines"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == ({"matchNames": namespaces} if namespaces
                                         else {"any": True})
    assert spec["podMetricsEndpoints"] == [{"port": "health", "path": "/metrics",
                                            "interval": "30s"}]
    # It selects the pods the operator makes, on the port they serve /metrics on.
    market = Market.from_body({
        "metadata": {"name": "btc-usdt", "namespace": "desk-a", "uid": "1"},
        "spec": {"base": "BTC", "quote": "USDT", "tickSize": "0.1", "lotSize": "0.001"}})
    pod = statefulset(market, Config())["spec"]["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert "health" in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}

    dashboard = made["ConfigMap"]["tp-tradeplane-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tradeplane.json"]) == json.loads(
        DASHBOARD.read_text())


def test_monitoring_is_off_by_default(tmp_path: Path) -> None:
    made = by_kind(run(_installed(tmp_path, {})))
    assert "PodMonitor" not in made
    assert "ConfigMap" not in made


@pytest.mark.parametrize(("change", "where"), [
    ({"podMonitor": {"interval": "often"}}, "interval"),
    ({"podMonitor": {"enabled": "yes"}}, "enabled"),
    ({"grafanaDashboard": {"folder": "exchange"}}, "'folder' was unexpected"),
], ids=["interval", "enabled as text", "unknown key"])
def test_the_schema_refuses_wrong_monitoring_values(change: dict[str, Any], where: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = _merged(yaml.safe_load((CHART / "values.yaml").read_text()),
                     {"monitoring": change})
    errors = [f"{error.json_path} {error.message}"
              for error in jsonschema.Draft202012Validator(schema).iter_errors(values)]
    assert any(where in error for error in errors), errors


def _registered() -> dict[str, str]:
    """Every tradeplane metric the processes register: its name as scraped, its type."""
    for module in ("tradeplane_engine.service.market", "tradeplane_engine.store.recorder",
                   "tradeplane_gateway.service", "tradeplane_operator.handlers"):
        importlib.import_module(module)  # each registers its component's metrics
    return {family.name + ("_total" if family.type == "counter" else ""): family.type
            for family in REGISTRY.collect() if family.name.startswith("tradeplane_")}


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    registered = _registered()
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"]
                   for target in panel.get("targets", [])]
    assert expressions
    asked = {re.sub(r"_(bucket|count|sum)$", "", name)
             for expression in expressions
             for name in re.findall(r"tradeplane_[a-z_]+", expression)}
    assert asked - set(registered) == set()
    for name, kind in registered.items():
        if kind == "histogram":
            assert f"{name}_bucket" in "".join(expressions), f"{name}: no panel"
    # Rates of counters only, never of gauges.
    for expression in expressions:
        for name in re.findall(r"(?:rate|increase)\((tradeplane_[a-z_]+)", expression):
            assert name.endswith(("_total", "_bucket")), expression


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    assert [name for name in _registered() if f"`{name}`" not in text] == []
