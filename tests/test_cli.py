"""The ``tradeplane`` command line: what ``make run`` shows a newcomer."""

from __future__ import annotations

import re

import pytest

from tradeplane.cli import main


def test_demo_walks_through_orders_then_runs_the_workload(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--commands", "3000", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "trade #1: 2 SOL at 100 (alice's #1 was resting, bob's #3 took it)" in out
    assert "order #5 canceled: filled 1, open 0, reason MARKET_REMAINDER" in out
    assert "rejected, code 301 UNKNOWN_ORDER" in out
    assert "code 204 QUANTITY_NOT_ON_LOT" in out
    trades = re.search(r"trades: ([\d,]+)", out)
    assert trades is not None
    assert int(trades.group(1).replace(",", "")) > 0
    assert "state hash" in out


def test_demo_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    hashes = []
    for _ in range(2):
        main(["demo", "--commands", "2000"])
        found = re.search(r"state hash ([0-9a-f]+)", capsys.readouterr().out)
        assert found is not None
        hashes.append(found.group(1))
    assert hashes[0] == hashes[1]


def test_demo_refuses_a_non_positive_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--commands", "0"])
    assert exit_info.value.code == 2
    assert "--commands must be positive" in capsys.readouterr().err
