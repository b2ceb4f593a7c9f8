"""Commands nobody should have written, put straight into a market's command stream by a
client that bypassed the gateway: the engine skips or answers them, the same way on every
replica and replay, and goes on serving the market."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane_engine.wire import (
    HEADER_REPLY,
    HEADER_SEQUENCE,
    command_subject,
    decode_event_message,
    event_stream,
    event_subject,
)
from tradeplane_gateway import connect
from tradeplane_shared.telemetry import TRACEPARENT

PLACE = (b'{"type":"place","sequence":0,"timestamp":0,"account":%s,"side":"buy",'
         b'"quantity":100,"price":9900}')

POISON: list[tuple[str, bytes, dict[str, str] | None]] = [
    ("an account that is not one subject token", PLACE % b'"a.b c"', None),
    ("an account with a wildcard", PLACE % b'"a.>"', None),
    ("an empty account", PLACE % b'""', None),
    ("a reply subject with a space", PLACE % b'"mallory"', {HEADER_REPLY: "x y"}),
    ("a reply subject with a wildcard", PLACE % b'"mallory"', {HEADER_REPLY: "_INBOX.>"}),
    ("an empty reply subject", PLACE % b'"mallory"', {HEADER_REPLY: ""}),
    ("not a command", b"\xff\x00 not json", None),
]


@pytest.mark.parametrize(("payload", "headers"), [(p, h) for _, p, h in POISON],
                         ids=[name for name, _, _ in POISON])
def test_a_poison_command_leaves_the_market_serving(tmp_path: Path, payload: bytes,
                                                    headers: dict[str, str] | None) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            service = exchange.services["sol-usdt"]
            await exchange.nc.jetstream().publish(command_subject("sol-usdt"), payload,
                                                  headers=headers)
            await eventually(lambda: service.published_through >= 1, 10,
                             "the poison command applied or skipped")
            placed = await alice.place("sol-usdt", "buy", "1", "99")
            assert placed.ok
            assert placed.sequence == 2
            assert not exchange.engine_tasks["sol-usdt"].done()

    run(scenario(), timeout=60)


def skipped(what: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
        "component": "engine", "what": what}) or 0.0


def test_headers_nobody_should_have_written_never_stop_the_market(tmp_path: Path) -> None:
    """A command's ``traceparent`` that is not one is not copied into its events
    message; events messages at the stream's end whose ``Tp-Sequence`` is not a number
    (someone else's) are stepped over by an engine starting on the stream, where they
    failed its start."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            js = exchange.nc.jetstream()
            before = {what: skipped(what) for what in ("trace header", "events header")}
            await js.publish(command_subject("sol-usdt"), PLACE % b'"mallory"',
                             headers={TRACEPARENT: "00-" + "x" * 5000})
            service = exchange.services["sol-usdt"]
            await eventually(lambda: service.published_through >= 1, 10, "the command")
            stored = await js.get_msg(event_stream("sol-usdt"), 1)
            assert [batch.trace for batch in decode_event_message(stored.data or b"")] == [None]
            assert skipped("trace header") == before["trace header"] + 1

            await exchange.stop_engine("sol-usdt")
            for sequence in ("not a number", "9" * 40, "-1"):
                await js.publish(event_subject("sol-usdt"), b"{}",
                                 headers={HEADER_SEQUENCE: sequence})
            restarted = await exchange.start_engine(SOL)
            assert restarted.published_through == 1
            assert skipped("events header") >= before["events header"] + 3
            placed = await alice.place("sol-usdt", "buy", "1", "99")
            assert placed.sequence == 2
            assert not exchange.engine_tasks["sol-usdt"].done()

    run(scenario(), timeout=60)
