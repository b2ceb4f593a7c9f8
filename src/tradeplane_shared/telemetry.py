"""Traces across the order path: W3C trace context in NATS headers, OpenTelemetry spans.

An order is one trace: the SDK's request carries ``traceparent`` to the gateway, the
gateway's command carries it into the command stream, the engine forwards it on the
events message of that command, and the recorder continues it. Spans follow the
OpenTelemetry messaging conventions (``messaging.system = nats``, the destination, the
operation) plus ``tradeplane.*`` attributes: market, account, order id, sequence, and
the reject code where there is one.

Configuration is the standard ``OTEL_*`` environment: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_TRACES_EXPORTER=otlp``/``console``) turns exporting on, ``OTEL_SERVICE_NAME``
names the process, ``OTEL_TRACES_SAMPLER``/``_ARG`` choose the sampler. Without an
exporter nothing is recorded and the hot path pays one boolean test per batch.

The default sampler is parent-based with a 1% ratio at the root (the SDK or the
gateway), so the engine and recorder follow the decision made at the edge. Whatever the
sampler says, a span that carries a reject code is recorded (``RejectsKept``): a
rejected order can always be found, in the trace its request started.
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
REJECT_CODE = "tradeplane.reject.code"
SAMPLED_AT_EDGE = "tradeplane.sampled"
"""Set on a root span the edge already decided to sample (see ``sample_root``)."""
DEFAULT_RATIO = 0.01

_propagator = TraceContextTextMapPropagator()
enabled = False
"""True once ``configure`` installed an exporting tracer provider (checked on hot paths)."""
root_ratio: float | None = None
"""The share of orders the edge starts a trace for (from the sampler's settings); None
before ``sampler`` ran, when the SDK's sampler decides alone."""
tracer: Tracer = trace.get_tracer("tradeplane")


def configure(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider from the ``OTEL_*`` environment; False (and nothing
    installed) when no exporter is configured or the SDK is disabled."""
    env = os.environ if environ is None else environ
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    wants_otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                      or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) or exporter_name == "otlp"
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporter_name == "none" or not (
            wants_otlp or exporter_name == "console"):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource, sampler=sampler(env))
    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    atexit.register(provider.shutdown)  # export what is still batched
    return True


def install(provider: Any) -> None:
    """Use ``provider`` for tradeplane's spans (tests pass one with an in-memory exporter).

    The process-wide provider can be set once; tradeplane's own code uses ``tracer``,
    which follows every ``install``."""
    global enabled, tracer
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    tracer = provider.get_tracer("tradeplane")
    enabled = True


def uninstall() -> None:
    global enabled, tracer
    enabled = False
    tracer = trace.get_tracer("tradeplane")


def sample_root() -> bool:
    """Should an order arriving without trace context start a sampled trace?

    Most orders are not sampled, and for them the edge makes no span at all: one random
    number instead of a span, a context and ids, which is what keeps the default sampler
    cheap on the hot path. A sampled one gets a span that ``SAMPLED_AT_EDGE`` marks."""
    return root_ratio is None or random.random() < root_ratio


def sampler(environ: Mapping[str, str]) -> Any:
    """The sampler the environment asks for, wrapped so that rejects are always kept."""
    global root_ratio
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio").strip().lower()
    ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", DEFAULT_RATIO))
    chosen = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
    }.get(name) or ParentBased(TraceIdRatioBased(ratio))
    root_ratio = {"always_on": 1.0, "always_off": 0.0, "parentbased_always_on": 1.0,
                  "parentbased_always_off": 0.0}.get(name, ratio)  # else: the ratio one
    return RejectsKept(chosen)


class RejectsKept:
    """A sampler that records every span with a reject code, and asks ``inner`` the rest."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Any = None,
                      links: Sequence[Link] | None = None, trace_state: Any = None) -> Any:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        if attributes and (REJECT_CODE in attributes or SAMPLED_AT_EDGE in attributes):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes,
                                  parent.trace_state if parent.is_valid else None)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes,
                                        links, trace_state)

    def get_description(self) -> str:
        return f"RejectsKept{{{self.inner.get_description()}}}"


# -- propagation through NATS headers ----------------------------------------------------

def inject(headers: dict[str, str], context: Context | None = None) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span, if there is one."""
    _propagator.inject(headers, context)


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The context a message's headers carry, or None."""
    if not headers or TRACEPARENT not in headers:
        return None
    return _propagator.extract(headers)


def context_of(traceparent: str | None) -> Context | None:
    return None if not traceparent else _propagator.extract({TRACEPARENT: traceparent})


def is_sampled(traceparent: str | None) -> bool:
    """The ``traceparent``'s flags say sampled (W3C: ``00-<trace>-<span>-<flags>``, bit 0)."""
    if not traceparent or len(traceparent) < 2:
        return False
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


def messaging(operation: str, destination: str, **extra: Any) -> dict[str, Any]:
    """The messaging semantic-convention attributes of a NATS span."""
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.destination.name": destination,
    }
    attributes.update({key: value for key, value in extra.items() if value is not None})
    return attributes


def consumer_spans(name: str, started: int,
                   traced: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """One span per sampled message (child of the trace it carries), named ``name``,
    from ``started`` (ns) to now; and, if there were any, one span linking them."""
    links = []
    for traceparent, attributes in traced:
        if not is_sampled(traceparent):
            continue
        span = tracer.start_span(name, context=context_of(traceparent), kind=SpanKind.CONSUMER,
                                 attributes=attributes, start_time=started)
        span.end()
        links.append(Link(span.get_span_context()))
    if links:
        tracer.start_span(f"{name} batch", links=links, start_time=started,
                          attributes={"tradeplane.batch.size": len(traced)}).end()
