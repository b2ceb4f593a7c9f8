"""The OTLP receiver the telemetry tests rely on: spans sent over OTLP/HTTP come back.

If these fail, a telemetry test's "no spans arrived" would say nothing about the code
under test, so the receiver itself is proven here: with the SDK's own exporter
configured by the ``OTEL_*`` environment (as our processes are), through a real rotel,
including ids, parentage, links, attributes and the resource; and it fails loudly, not
by timing out, when rotel cannot start or dies.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.e2e.test_up import processes_mentioning
from tests.support.otlp import OtlpReceiver, ReceiverError, otlp_receiver
from tradeplane.processes import StartError


def _run[T](coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """A deadline on the whole test, so a hang fails instead of stalling CI."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def _hex(number: int, width: int) -> str:
    return format(number, f"0{width}x")


def test_spans_exported_over_otlp_http_arrive_with_ids_links_and_attributes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[OtlpReceiver, dict[str, Any]]:
        async with otlp_receiver(tmp_path) as receiver:
            assert receiver.endpoint.startswith("http://127.0.0.1:")
            for name, value in receiver.environ().items():
                monkeypatch.setenv(name, value)
            provider = TracerProvider(
                resource=Resource.create({"service.name": "otlp-receiver-test"}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            tracer = provider.get_tracer("tests.otlp")
            try:
                with tracer.start_as_current_span("earlier") as earlier:
                    pass
                with tracer.start_as_current_span(
                        "parent", kind=SpanKind.PRODUCER,
                        attributes={"market": "sol-usdt", "sequence": 7, "price": 101.5,
                                    "accepted": True, "fills": [1, 2]},
                        links=[Link(earlier.get_span_context(), {"why": "follows"})]
                ) as parent, tracer.start_as_current_span(
                        "child", attributes={"messaging.system": "nats"}) as child:
                    child.add_event("filled", {"quantity": 2})
                    child.set_status(Status(StatusCode.ERROR, "rejected"))
                assert await asyncio.to_thread(provider.force_flush, 5_000)
                spans = await receiver.wait_for_spans(3)
            finally:
                provider.shutdown()
        ids = {"earlier": earlier.get_span_context(), "parent": parent.get_span_context(),
               "child": child.get_span_context()}
        return receiver, {"spans": spans, "ids": ids}

    receiver, result = _run(scenario())
    by_name = {span["name"]: span for span in result["spans"]}
    assert sorted(by_name) == ["child", "earlier", "parent"]
    ids = result["ids"]
    parent, child = by_name["parent"], by_name["child"]

    assert parent["trace_id"] == child["trace_id"] == _hex(ids["parent"].trace_id, 32)
    assert parent["span_id"] == _hex(ids["parent"].span_id, 16)
    assert parent["parent_span_id"] is None
    assert child["span_id"] == _hex(ids["child"].span_id, 16)
    assert child["parent_span_id"] == parent["span_id"]
    assert parent["links"] == [{"trace_id": _hex(ids["earlier"].trace_id, 32),
                                "span_id": _hex(ids["earlier"].span_id, 16),
                                "attributes": {"why": "follows"}}]

    assert parent["attributes"] == {"market": "sol-usdt", "sequence": 7, "price": 101.5,
                                    "accepted": True, "fills": [1, 2]}
    assert parent["kind"] == "PRODUCER"
    assert child["attributes"] == {"messaging.system": "nats"}
    assert child["kind"] == "INTERNAL"
    assert child["events"] == [{"name": "filled", "attributes": {"quantity": 2}}]
    assert (child["status_code"], child["status_message"]) == ("ERROR", "rejected")
    for span in result["spans"]:
        assert span["service_name"] == "otlp-receiver-test"
        assert span["resource"]["service.name"] == "otlp-receiver-test"
        assert span["scope"] == "tests.otlp"

    # Leaving the block stopped rotel and everything it started.
    assert receiver.process.returncode is not None
    assert processes_mentioning(str(receiver.directory)) == []
    port = int(receiver.endpoint.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_rotel_that_cannot_start_fails_at_once_with_its_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with otlp_receiver(tmp_path, extra_args=["--batch-timeout", "nonsense"]):
            raise AssertionError("rotel started with an invalid flag")

    with pytest.raises(StartError, match="invalid value 'nonsense' for '--batch-timeout"):
        _run(scenario())
    assert processes_mentioning(str(tmp_path)) == []


def test_a_rotel_that_dies_fails_the_wait_and_the_block(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with otlp_receiver(tmp_path) as receiver:
            receiver.process.kill()
            receiver.process.wait()
            with pytest.raises(ReceiverError, match="rotel exited with -9 while waiting"):
                await receiver.wait_for_spans(1, timeout=2.0)

    with pytest.raises(ReceiverError, match="rotel exited with -9 before the test ended"):
        _run(scenario())
    assert processes_mentioning(str(tmp_path)) == []
