"""``tradeplane up`` exporting traces over OTLP to a real receiver (rotel on loopback):
one order placed with the SDK is one trace across the trader, gateway, engine and
recorder processes."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.e2e.test_up import ADMIN, cli, tradeplane_up
from tests.support.exchange import run
from tests.support.otlp import ReceivedSpan, otlp_receiver
from tradeplane_gateway import connect
from tradeplane_shared import telemetry

SERVICES = {"tradeplane-gateway", "tradeplane-engine", "tradeplane-recorder"}


def test_tradeplane_up_exports_one_trace_per_order(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with otlp_receiver(tmp_path / "otlp") as receiver:
            environ = {**receiver.environ(), "OTEL_TRACES_SAMPLER": "always_on",
                       "OTEL_BSP_SCHEDULE_DELAY": "200"}
            with tradeplane_up(tmp_path / "up", "--postgres-dsn", database,
                               env=environ) as (_, url):
                provider = TracerProvider(resource=Resource.create(
                    {"service.name": "test-trader"}))
                provider.add_span_processor(SimpleSpanProcessor(
                    OTLPSpanExporter(endpoint=receiver.traces_endpoint)))
                telemetry.install(provider)
                funded = cli(url, "deposit", "alice", "SOL", "1", "--transfer-id", "alice")
                assert funded.returncode == 0, funded.stdout + funded.stderr
                try:
                    admin = ADMIN[url]["TRADEPLANE_CREDENTIALS"]  # may act as alice
                    async with connect(url, account="alice", credentials=admin) as alice:
                        reply = await alice.place("sol-usdt", "sell", "1", "150")
                finally:
                    provider.shutdown()
                    telemetry.uninstall()
                assert reply.order is not None

                def whole(spans: list[ReceivedSpan]) -> bool:
                    client = [span for span in spans if span["service_name"] == "test-trader"]
                    if not client:
                        return False
                    trace = {span["service_name"] for span in spans
                             if span["trace_id"] == client[0]["trace_id"]}
                    return trace >= SERVICES
                spans = await receiver.wait_for_spans(whole, timeout=30)
            [client] = [span for span in spans if span["service_name"] == "test-trader"]
            trace = [span for span in spans if span["trace_id"] == client["trace_id"]]
            by_service = {span["service_name"]: span for span in trace
                          if span["name"].startswith("process")}
            assert by_service["tradeplane-gateway"]["parent_span_id"] == client["span_id"]
            assert by_service["tradeplane-engine"]["parent_span_id"] == (
                by_service["tradeplane-gateway"]["span_id"])
            assert by_service["tradeplane-engine"]["attributes"]["tradeplane.order_id"] == (
                reply.order.order_id)
            assert by_service["tradeplane-recorder"]["attributes"]["messaging.system"] == "nats"
    run(scenario(), timeout=180)
