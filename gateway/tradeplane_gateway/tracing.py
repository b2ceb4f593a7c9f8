"""The gateway's spans: one per sampled request, from its arrival to its reply.

The request's ``traceparent`` (from the SDK, or any W3C-aware client) decides: sampled,
the request gets a span, and the command the gateway sequences carries the span's
context into the command stream; not sampled, the gateway makes no span and passes the
caller's ``traceparent`` on as it came. A request without one starts a trace only when
``telemetry.sample_root`` says so. This keeps an unsampled order's cost to a header test
and a random number. An edge reject always records a ``reject`` span with its code,
which the sampler keeps whatever the trace's decision (``telemetry.RejectsKept``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tradeplane_engine.wire import GATEWAY_QUEUE, command_subject
from tradeplane_gateway.validation import Submission
from tradeplane_shared import telemetry

_reply_status = msgspec.json.Decoder(dict[str, Any]).decode


def start_request_span(msg: Msg, account: str, verb: str) -> tuple[Any, str | None]:
    """The request's span if it is sampled; else None and the caller's traceparent."""
    parent = msg.headers.get(telemetry.TRACEPARENT) if msg.headers else None
    if parent is not None:
        if not telemetry.is_sampled(parent):
            return None, parent
        context = telemetry.context_of(parent)
        attributes: dict[str, Any] = {}
    elif telemetry.sample_root():
        context = None
        # The edge decided (a ratio sampler); otherwise the SDK's sampler decides.
        attributes = ({telemetry.SAMPLED_AT_EDGE: True}
                      if telemetry.root_ratio is not None else {})
    else:
        return None, None
    attributes.update(telemetry.messaging(
        "process", msg.subject, **{"tradeplane.account": account,
                                   "messaging.consumer.group.name": GATEWAY_QUEUE}))
    span = telemetry.tracer.start_span(f"process tp.api.order.{verb}", context=context,
                                       kind=SpanKind.CONSUMER, attributes=attributes)
    return span, None


def trace_command(span: Any, work: Submission, headers: dict[str, str]) -> None:
    """Name the order on the span, and carry the span's context in the command."""
    span.set_attribute("tradeplane.market", work.market.definition.name)
    if work.client_order_id:
        span.set_attribute("tradeplane.client_order_id", work.client_order_id)
    span.set_attribute("messaging.destination.name", command_subject(
        work.market.definition.name))
    telemetry.inject(headers, trace.set_span_in_context(span))


def trace_reject(span: Any, passed_on: str | None, code: int, name: str,
                 account: str) -> None:
    """An edge reject: a span of its own (always kept), in the request's trace."""
    context = (trace.set_span_in_context(span) if span is not None
               else telemetry.context_of(passed_on))
    telemetry.tracer.start_span(
        "reject tp.api.order", context=context,
        attributes={telemetry.REJECT_CODE: code, "tradeplane.reject.name": name,
                    "tradeplane.reject.stage": "edge", "tradeplane.account": account}).end()
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, name))


def end_request_span(span: Any, sequence: int, payload: bytes) -> None:
    """End the request's span with what the reply said (sequence, order id, reject)."""
    if sequence:
        span.set_attribute("tradeplane.sequence", sequence)
    try:
        reply = _reply_status(payload)
    except msgspec.DecodeError:
        reply = {}
    order = reply.get("order") or {}
    if order.get("orderId"):
        span.set_attribute("tradeplane.order_id", order["orderId"])
    error = reply.get("error") or {}
    if error:
        span.set_attribute(telemetry.REJECT_CODE, error.get("code", 0))
        span.set_status(Status(StatusCode.ERROR, str(error.get("name", ""))))
    elif order.get("code"):
        span.set_attribute(telemetry.REJECT_CODE, order["code"])
    span.end()
