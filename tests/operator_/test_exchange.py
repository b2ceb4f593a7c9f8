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
from tradeplane_operator.exchange import MARKETS_BUCKET, Exchange


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
