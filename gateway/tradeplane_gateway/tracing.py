"""The gateway's spans: one per request, from its arrival to its reply.

The request's ``traceparent`` (from the SDK, or any W3C-aware client) is the parent; the
command the gateway sequences carries the request span's context on into the command
stream. An edge reject records a ``reject`` span with the code, which the sampler keeps
whatever the trace's sampling decision (``telemetry.RejectsKept``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tradeplane_engine import telemetry
from tradeplane_engine.wire import command_subject
from tradeplane_gateway.validation import Submission

_reply_status = msgspec.json.Decoder(dict[str, Any]).decode


def start_request_span(msg: Msg, account: str, verb: str) -> Any:
    return telemetry.tracer.start_span(
        f"process tp.api.order.{verb}", context=telemetry.extract(msg.headers),
        kind=SpanKind.CONSUMER, attributes=telemetry.messaging(
            "process", msg.subject, **{"tradeplane.account": account,
                                       "messaging.consumer.group.name": "tp-gateway"}))


def trace_command(span: Any, work: Submission, headers: dict[str, str]) -> None:
    """Name the order on the span, and carry the span's context in the command."""
    span.set_attribute("tradeplane.market", work.market.definition.name)
    if work.client_order_id:
        span.set_attribute("tradeplane.client_order_id", work.client_order_id)
    span.set_attribute("messaging.destination.name", command_subject(
        work.market.definition.name))
    telemetry.inject(headers, trace.set_span_in_context(span))


def trace_reject(span: Any, code: int, name: str) -> None:
    """An edge reject: recorded as a span of its own (always kept) under the request."""
    telemetry.tracer.start_span(
        "reject tp.api.order", context=trace.set_span_in_context(span),
        attributes={telemetry.REJECT_CODE: code, "tradeplane.reject.name": name,
                    "tradeplane.reject.stage": "edge"}).end()
    span.set_status(Status(StatusCode.ERROR, name))


def end_request_span(span: Any, sequence: int, payload: bytes) -> None:
    """End the request's span with what the reply said (sequence, order id, reject)."""
    if sequence:
        span.set_attribute("tradeplane.sequence", sequence)
    if span.is_recording():
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
