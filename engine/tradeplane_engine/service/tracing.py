"""The engine's spans: one per traced command, and one per batch linking them.

Called after a batch is applied, only when tracing is on. A command gets a span when
its order's trace is sampled, or when the engine rejected it (a reject is always
recorded, in the trace its request started). The span is the child of the gateway's
(from the command's ``traceparent``) and covers the batch's apply; the batch's own span
links every command span it carried, so a slow batch leads to the orders in it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.trace import Link, SpanKind

from tradeplane_engine.core import AnyEvent, OrderAccepted, OrderRejected, OrderUpdate
from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.wire import command_subject
from tradeplane_shared import telemetry


def trace_batch(market: str, replica: str, started: int,
                applied: Sequence[tuple[SequencedCommand, Sequence[AnyEvent]]]) -> None:
    """Spans for the traced commands of one applied batch (``started``: ns, wall clock)."""
    tracer = telemetry.tracer
    subject = command_subject(market)
    links: list[Link] = []
    for command, events in applied:
        parent = command.trace
        rejected = next((event for event in events if isinstance(event, OrderRejected)), None)
        if rejected is None and not telemetry.is_sampled(parent):
            continue  # a reject is kept even without a trace: it starts one
        attributes = telemetry.messaging(
            "process", subject, **{"tradeplane.market": market, "tradeplane.replica": replica,
                                   "tradeplane.sequence": command.sequence})
        order = next((event for event in events
                      if isinstance(event, OrderAccepted | OrderRejected | OrderUpdate)), None)
        if order is not None:
            attributes["tradeplane.order_id"] = order.order_id
            attributes["tradeplane.account"] = order.account
        if rejected is not None:
            attributes[telemetry.REJECT_CODE] = int(rejected.code)
            attributes["tradeplane.reject.name"] = rejected.code.name
        span = tracer.start_span(f"process {subject}", context=telemetry.context_of(parent),
                                 kind=SpanKind.CONSUMER, attributes=attributes,
                                 start_time=started)
        span.end()
        links.append(Link(span.get_span_context()))
    if links:
        batch = tracer.start_span(f"apply {subject}", kind=SpanKind.INTERNAL, links=links,
                                  attributes={"tradeplane.market": market,
                                              "tradeplane.batch.size": len(applied)},
                                  start_time=started)
        batch.end(time.time_ns())
