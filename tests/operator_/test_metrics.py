"""The operator's metrics over a Market's life: applied, read while real replicas run, and
retired, with the operator in-process against the emulator and a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.operator_.harness import Kubelet, eventually, market_manifest, operator_world
from tests.support.exchange import run
from tests.support.metrics import Samples, has, samples, value
from tradeplane.cli import main
from tradeplane_operator.kube import MARKETS

NAME = "operator-metrics"
SERIES = {"namespace": "default", "market": NAME}


def scrape() -> Samples:
    return samples(generate_latest().decode())


def test_a_market_is_counted_while_managed_and_its_series_go_with_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path, final_snapshot_timeout=1.0) as world, \
                Kubelet(world):
            before = scrape()
            await world.apply(market_manifest(NAME))

            def serving() -> bool:
                scraped = scrape()
                return (value(scraped, "tradeplane_operator_market_available", **SERIES) == 1
                        and value(scraped, "tradeplane_operator_market_ready_replicas",
                                  **SERIES) == 2)

            await eventually(serving, 30, "a leader serving and both replicas ready")
            during = scrape()
            assert value(during, "tradeplane_operator_market_replicas", **SERIES) == 2
            assert value(during, "tradeplane_operator_markets") == value(
                before, "tradeplane_operator_markets") + 1
            for metric, result in (("tradeplane_operator_reconciles_total", "ok"),
                                   ("tradeplane_operator_status_readings_total", "ok")):
                assert value(during, metric, result=result) > value(
                    before, metric, result=result), metric

            await world.unprotect(NAME)
            await world.kube.delete(MARKETS, "default", NAME)

            def retired() -> bool:
                scraped = scrape()
                return (not has(scraped, "tradeplane_operator_market_available", **SERIES)
                        and value(scraped, "tradeplane_operator_markets") == value(
                            before, "tradeplane_operator_markets"))

            await eventually(retired, 30, "the Market retired and its series gone")
    run(scenario())


def test_the_operator_serves_metrics_on_a_port_of_its_own(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["operator", "--help"])
    assert "--metrics-port METRICS_PORT" in capsys.readouterr().out
