"""Values in the replicas bucket that are not replica reports, written there by anyone
with access to it: the choice of a standby to hand over to (on SIGTERM, and for
``tradeplane failover``) and ``tradeplane status`` skip and count them, and go on with
the reports that are real."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import msgspec
import nats
from prometheus_client import REGISTRY

from tests.support.exchange import SETTINGS, SOL, run
from tradeplane.processes import NatsServer
from tradeplane.trading import replica_statuses, status_command
from tradeplane_engine.service.lease import replicas_bucket
from tradeplane_engine.service.shutdown import standbys
from tradeplane_engine.streams import markets_bucket
from tradeplane_engine.wire import REPLICAS_BUCKET, encode_definition

GOOD = {"market": "sol-usdt", "replica": "good", "role": "standby", "ready": True,
        "lag": 0, "mode": "continuous", "sequence": 7, "nextTradeId": 3, "epoch": 2}

BAD = [
    b"\xff\x00 not json",
    b'["sol-usdt", "bad"]',
    msgspec.json.encode({**GOOD, "replica": "far", "lag": "far behind"}),
    b'{"market": "sol-usdt", "replica": "huge", "role": "standby", "ready": true,'
    b' "lag": 1e400}',
    msgspec.json.encode({**GOOD, "replica": ["a", "list"]}),
]


def skipped(component: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
        "component": component, "what": "replica report"}) or 0.0


def test_reports_that_are_not_reports_are_skipped(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            nc = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = nc.jetstream()
                await (await markets_bucket(js, SETTINGS)).put("sol-usdt",
                                                               encode_definition(SOL))
                reports = await replicas_bucket(js, memory=True)
                for number, value in enumerate(BAD):
                    await reports.put(f"sol-usdt.bad-{number}", value)
                await reports.put("sol-usdt.good", msgspec.json.encode(GOOD))
                before = {component: skipped(component) for component in ("engine", "cli")}

                assert await standbys(js, reports, "sol-usdt", "leader") == ["good"]
                assert skipped("engine") == before["engine"] + len(BAD)
                assert await standbys(js, await js.key_value(REPLICAS_BUCKET), "sol-usdt",
                                      "leader", "cli") == ["good"]

                statuses = await replica_statuses(nc)
                assert [status["replica"] for status in statuses["sol-usdt"]] == ["good"]
                out = io.StringIO()
                arguments = argparse.Namespace(nats=server.url, access=server.access("admin"))
                assert await status_command(arguments, out) == 0
                assert "good (standby, 0)" in out.getvalue()
                assert skipped("cli") >= before["cli"] + 2 * len(BAD)
            finally:
                await nc.close()

    run(scenario())
