"""Traces across the order path, against the OpenTelemetry SDK's in-memory exporter:
the SDK, the gateway, the engine and the recorder (real nats-server and PostgreSQL,
each component as it runs in its process) make one connected trace per order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.recorder import Recorder
from tradeplane_gateway import RequestError, connect
from tradeplane_shared import telemetry


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span kept in memory; ``sampler_arg`` picks the root ratio."""
    exporter = InMemorySpanExporter()
    yield exporter
    telemetry.uninstall()


def tracing(exporter: InMemorySpanExporter, ratio: str) -> None:
    provider = TracerProvider(sampler=telemetry.sampler({"OTEL_TRACES_SAMPLER_ARG": ratio}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_one_order_is_one_trace_from_the_sdk_to_the_database(
        tmp_path: Path, database: str, spans: InMemorySpanExporter) -> None:
    tracing(spans, "1.0")

    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            recorder = Recorder(exchange.nc, pool, SOL, batch=16)
            task = asyncio.create_task(recorder.run())
            try:
                reply = await alice.place("sol-usdt", "sell", "2", "100",
                                          client_order_id="traced")
                await eventually(lambda: any(
                    span.name == "process tp.evt.sol-usdt" for span in
                    spans.get_finished_spans()), 10, "the recorder's span")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await pool.close()
            assert reply.order is not None
            finished = list(spans.get_finished_spans())
            [sdk] = named(finished, "send tp.api.order.place")
            [gateway] = named(finished, "process tp.api.order.place")
            [engine] = named(finished, "process tp.cmd.sol-usdt")
            [recorded] = named(finished, "process tp.evt.sol-usdt")
            trace_id = sdk.context.trace_id
            assert {span.context.trace_id for span in (gateway, engine, recorded)} == {
                trace_id}
            assert gateway.parent is not None
            assert gateway.parent.span_id == sdk.context.span_id
            assert engine.parent is not None
            assert engine.parent.span_id == gateway.context.span_id
            assert recorded.parent is not None
            assert recorded.parent.span_id == gateway.context.span_id
            for span in (sdk, gateway, engine, recorded):
                assert attributes(span)["messaging.system"] == "nats"
                assert "messaging.operation.type" in attributes(span)
                assert "messaging.destination.name" in attributes(span)
            assert attributes(sdk)["messaging.destination.name"] == (
                "tp.api.alice.order.place")
            assert attributes(gateway)["tradeplane.account"] == "alice"
            assert attributes(gateway)["tradeplane.market"] == "sol-usdt"
            assert attributes(gateway)["tradeplane.order_id"] == reply.order.order_id
            assert attributes(engine)["tradeplane.order_id"] == reply.order.order_id
            assert attributes(engine)["tradeplane.sequence"] == reply.sequence
            assert attributes(engine)["tradeplane.account"] == "alice"
            assert attributes(sdk)["tradeplane.sequence"] == reply.sequence
            # The engine's batch span links the commands it carried.
            [batch] = named(finished, "apply tp.cmd.sol-usdt")
            assert [link.context.span_id for link in batch.links] == [engine.context.span_id]
    run(scenario())


def test_rejected_orders_are_kept_whatever_the_sampler_says(
        tmp_path: Path, spans: InMemorySpanExporter) -> None:
    tracing(spans, "0")  # the root samples nothing

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="bob") as bob:
            await bob.place("sol-usdt", "buy", "1", "100")  # accepted: not traced
            with pytest.raises(RequestError) as engine_reject:
                await bob.place("sol-usdt", "buy", "1", "150")  # outside the price band
            with pytest.raises(RequestError) as edge_reject:
                await bob.place("sol-usdt", "buy", "1", "100.001")  # off the tick grid
            finished = list(spans.get_finished_spans())
            # Only the rejects: nothing of the accepted order, no batch span (a root).
            assert {span.name for span in finished} == {"process tp.cmd.sol-usdt",
                                                        "reject tp.api.order"}
            [engine] = named(finished, "process tp.cmd.sol-usdt")
            assert attributes(engine)[telemetry.REJECT_CODE] == engine_reject.value.code
            [edge] = named(finished, "reject tp.api.order")
            assert attributes(edge)[telemetry.REJECT_CODE] == edge_reject.value.code
            assert attributes(edge)["tradeplane.reject.stage"] == "edge"
            # Each is in the trace its request started (the SDK's unsampled span).
            assert engine.parent is not None
            assert edge.parent is not None
            assert engine.context.trace_id != edge.context.trace_id
    run(scenario())


def test_a_subject_that_names_no_request_is_traced_under_a_bounded_name(
        tmp_path: Path, spans: InMemorySpanExporter) -> None:
    """Span names come from the protocol's verbs: what a client puts in a subject does
    not make new ones."""
    tracing(spans, "1.0")

    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                exchange.raw_trader("mallory") as mallory:
            for subject in ("tp.api.mallory.order.liquidate", "tp.api.mallory.foo.bar"):
                await mallory.request(subject, b"{}", timeout=5)
            finished = list(spans.get_finished_spans())
            assert {span.name for span in finished} == {"process tp.api.order.unknown",
                                                        "reject tp.api.order"}
            assert [attributes(span)[telemetry.REJECT_CODE]
                    for span in named(finished, "reject tp.api.order")] == [907, 907]
    run(scenario())


def test_nothing_is_traced_without_an_exporter() -> None:
    assert telemetry.configure("tradeplane-test", {}) is False
    assert telemetry.enabled is False
    assert telemetry.configure("tradeplane-test", {"OTEL_SDK_DISABLED": "true",
                                                   "OTEL_TRACES_EXPORTER": "otlp"}) is False


def test_the_default_sampler_is_parent_based_with_rejects_kept() -> None:
    description = telemetry.sampler({}).get_description()
    assert description.startswith("RejectsKept{ParentBased")
    assert "TraceIdRatioBased{0.01}" in description
    assert "AlwaysOnSampler" in telemetry.sampler(
        {"OTEL_TRACES_SAMPLER": "always_on"}).get_description()


def test_the_edge_decides_roots_as_the_sampler_would() -> None:
    telemetry.sampler({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    assert not any(telemetry.sample_root() for _ in range(100))
    telemetry.sampler({"OTEL_TRACES_SAMPLER": "always_on"})
    assert all(telemetry.sample_root() for _ in range(100))
    telemetry.sampler({"OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert 300 < sum(telemetry.sample_root() for _ in range(1000)) < 700
    telemetry.sampler({})
    assert telemetry.root_ratio == telemetry.DEFAULT_RATIO
