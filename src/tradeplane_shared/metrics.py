"""Prometheus metrics every tradeplane process shares: NATS reconnects and exposition.

Every process serves prometheus_client's default registry: the engine on its health
port (``GET /metrics`` beside the probes), the gateway, the recorder and the operator
on their ``--metrics-port``. What one component counts lives beside it
(``tradeplane_engine.service.metrics``, ``tradeplane_engine.store.metrics``,
``tradeplane_gateway.metrics``, ``tradeplane_operator.metrics``); this module holds
what more than one of them needs. It sits outside the engine and the gateway because
both use it and the gateway imports nothing of the engine but what the import contracts
in pyproject.toml allow, and it defines each metric once: two definitions of one name in a
process (the tests run engines and a gateway together) would be refused by the
registry. docs/observability.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, Counter, generate_latest

NATS_RECONNECTS = Counter(
    "tradeplane_nats_reconnects",
    "Times the process's NATS connection was re-established after it was lost",
    ["component"])

UNTRUSTED_SKIPPED = Counter(
    "tradeplane_untrusted_skipped",
    "Messages, or parts of them, that a component read but did not write and skipped as "
    "malformed (what: command, reply subject, ...)", ["component", "what"])

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format, which every Prometheus reads (prometheus_client's own HTTP
server answers with it too when the scraper does not ask for another)."""


def reconnected(component: str) -> Callable[[], Awaitable[None]]:
    """A ``reconnected_cb`` for ``nats.connect``: counts the reconnects of ``component``
    (``engine``, ``gateway``, ``recorder``).

    The series exists from the connection on, at 0, so a dashboard's ``increase()``
    sees the first reconnect rather than a series appearing at 1.
    """
    child = NATS_RECONNECTS.labels(component)

    async def on_reconnect() -> None:
        child.inc()

    return on_reconnect


def exposition() -> tuple[bytes, str]:
    """The default registry in Prometheus' text format, and the content type to send."""
    return generate_latest(REGISTRY), CONTENT_TYPE
