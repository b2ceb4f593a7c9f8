"""Differential test: the engine and Liquibook (C++) trade alike on the standard workload.

Liquibook has no self-trade prevention, so the workload turns it off; with it off,
both engines must make the same number of trades for the same total quantity.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tradeplane_engine.core import Engine, Trade
from tradeplane_engine.workload import SPEC, generate, to_commands

pytest.importorskip("liquibook")

DRIVER = Path(__file__).resolve().parents[3] / "bench" / "liquibook_driver.py"


def load_driver() -> object:
    spec = importlib.util.spec_from_file_location("liquibook_driver", DRIVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1, 42])
def test_same_trades_as_liquibook(seed: int) -> None:
    workload = generate(20_000, seed)
    engine = Engine(SPEC)
    trades = [
        event
        for command in to_commands(workload)
        for event in engine.apply(command)
        if type(event) is Trade
    ]
    result = load_driver().run_liquibook(workload, listener=True)  # type: ignore[attr-defined]
    assert len(trades) > 1_000
    assert (len(trades), sum(trade.quantity for trade in trades)) == (
        result.trades,
        result.traded_quantity,
    )
