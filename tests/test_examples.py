"""Every Market manifest in examples/ is one the engine accepts as it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tradeplane_engine.core import MarketSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "markets").glob("*.yaml"))
OPERATOR_FIELDS = {"replicas", "fees", "snapshotEvery", "engine"}
"""Spec fields for the operator (how to run the market), not for matching."""


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_market_is_valid(path: Path) -> None:
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "tradeplane.dev/v1alpha1"
    assert manifest["kind"] == "Market"
    matching = {k: v for k, v in manifest["spec"].items() if k not in OPERATOR_FIELDS}
    spec = msgspec.convert(matching, MarketSpec)
    assert spec.symbol.lower() == manifest["metadata"]["name"]
    assert spec.rules().min_notional >= 0
