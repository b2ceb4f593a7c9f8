"""What the operator reads from the exchange's buckets, on a real nats-server: values
anyone with access may have written that are not what engines or the operator write are
skipped and counted, never an error that stops a reconciliation or a status reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.support.exchange import run
from tradeplane.processes import NatsServer
from tradeplane_operator.exchange import LEASES_BUCKET, MARKETS_BUCKET, REPLICAS_BUCKET, Exchange


def skipped(what: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_operator_untrusted_skipped_total",
                                     {"what": what}) or 0.0


@pytest.mark.parametrize("value", [
    b"\xff\x00 not json",
    b'["sol-usdt"]',
    json.dumps({"name": "other-usdt", "tickSize": "1"}).encode(),
    json.dumps({"name": "sol-usdt", "padding": "x" * 100_000}).encode(),
], ids=["not JSON", "not an object", "another market's", "huge"])
def test_a_bad_definition_reads_as_none_and_is_replaced(tmp_path: Path, value: bytes) -> None:
    async def scenario() -> None:
        with NatsServer(tmp_path / "nats") as server:
            exchange = await Exchange.connect(server.url)
            try:
                await exchange.put_definition("sol-usdt", {"name": "sol-usdt"})
                assert await exchange.definition("sol-usdt") == {"name": "sol-usdt"}
                kv = await exchange.nc.jetstream().key_value(MARKETS_BUCKET)
                await kv.put("sol-usdt", value)
                before = skipped("market definition")
                assert await exchange.definition("sol-usdt") is None
                assert skipped("market definition") == before + 1
            finally:
                await exchange.close()

    run(scenario())


def test_reports_and_leases_that_are_not_are_skipped(tmp_path: Path) -> None:
    """The status reading goes on with the reports that are real; a lease that is not
    one reads as none (the replicas let it lapse and replace it)."""
    good = {"market": "sol-usdt", "replica": "good", "role": "leader", "epoch": 2,
            "ready": True, "lastFailover": 1_795_293_344_818_800_267}
    bad = [b"\xff\x00 not json", b'["a"]', b'{"replica": "x", "epoch": 1e400}',
           json.dumps({**good, "replica": "y", "lastFailover": 1e30}).encode(),
           json.dumps({**good, "replica": "z", "epoch": [1]}).encode()]

    async def scenario() -> None:
        with NatsServer(tmp_path / "nats") as server:
            exchange = await Exchange.connect(server.url)
            try:
                js = exchange.nc.jetstream()
                reports = await js.create_key_value(bucket=REPLICAS_BUCKET, history=1)
                for number, value in enumerate(bad):
                    await reports.put(f"sol-usdt.bad-{number}", value)
                await reports.put("sol-usdt.good", json.dumps(good).encode())
                before = skipped("replica report")
                assert [report.replica for report in await exchange.replicas("sol-usdt")] \
                    == ["good"]
                assert skipped("replica report") == before + len(bad)

                leases = await js.create_key_value(bucket=LEASES_BUCKET, history=1)
                for value in (b"\xff not json", b"[1]", b'{"holder": "a", "epoch": 1e400}'):
                    await leases.put("sol-usdt", value)
                    before = skipped("lease")
                    assert await exchange.lease("sol-usdt") is None
                    assert skipped("lease") == before + 1
            finally:
                await exchange.close()

    run(scenario())
