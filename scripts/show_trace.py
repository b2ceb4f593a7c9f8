"""Print the trace of one order as a tree: what docs/observability.md shows.

Runs a whole exchange in this process (real nats-server; engine, gateway and, with
``--postgres-dsn``, a recorder) with every order sampled into the SDK's in-memory
exporter, places one resting sell and one crossing buy, and prints the buy's spans with
their timings and attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.exchange import SOL, local_exchange

from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.recorder import Recorder
from tradeplane_gateway import connect
from tradeplane_shared import telemetry

SHOWN = ("messaging.operation.type", "messaging.destination.name", "tradeplane.account",
         "tradeplane.market", "tradeplane.order_id", "tradeplane.sequence",
         "tradeplane.reject.code")


def tree(spans: list[ReadableSpan], trace_id: int) -> str:
    mine = sorted((span for span in spans if span.context.trace_id == trace_id),
                  key=lambda span: span.start_time or 0)
    start = min(span.start_time or 0 for span in mine)
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in mine:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines = [f"trace {trace_id:032x}"]

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            begin = ((span.start_time or 0) - start) / 1e6
            took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            service = (span.instrumentation_scope.name if span.instrumentation_scope
                       else "")
            lines.append(f"{'  ' * depth}{span.name}  [{service}] +{begin:.2f} ms, "
                         f"{took:.2f} ms")
            attributes = dict(span.attributes or {})
            shown = ", ".join(f"{key}={attributes[key]}" for key in SHOWN if key in attributes)
            lines.append(f"{'  ' * depth}  {shown}")
            walk(span.context.span_id, depth + 1)
    walk(None, 0)
    return "\n".join(lines)


async def main(postgres_dsn: str | None) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=telemetry.sampler({"OTEL_TRACES_SAMPLER": "always_on"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    with tempfile.TemporaryDirectory() as directory:
        async with local_exchange(Path(directory), SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            recorder_task = None
            if postgres_dsn:
                pool = await open_database(postgres_dsn)
                recorder_task = asyncio.create_task(
                    Recorder(exchange.nc, pool, SOL, batch=16).run())
            await alice.place("sol-usdt", "sell", "1", "100")
            await bob.place("sol-usdt", "buy", "1", "100")
            await asyncio.sleep(1.0)  # the recorder's batch
            if recorder_task is not None:
                recorder_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder_task
    spans = list(exporter.get_finished_spans())
    buy = [span for span in spans if span.name == "send tp.api.order.place"][-1]
    print(tree(spans, buy.context.trace_id))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-dsn")
    asyncio.run(main(parser.parse_args().postgres_dsn))
