"""The operator's Prometheus metrics: what it manages, how its work goes, what it reads.

The operator is not in the data path (engines elect their leaders themselves), so its
metrics say whether it keeps up: how many Markets it manages, how reconciliations end,
and what the last status reading of each Market found. They are served on
``tradeplane operator --metrics-port``. The operator imports neither the engine nor the
gateway (pyproject.toml's contracts), so these are defined here, not beside theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

import kopf
from prometheus_client import Counter, Gauge

from tradeplane_operator.children import Market
from tradeplane_operator.status import Change

MARKET_LABELS = ("namespace", "market")

MARKETS = Gauge("tradeplane_operator_markets",
                "Markets the operator manages (applied or reported on, not yet retired)")
RECONCILES = Counter(
    "tradeplane_operator_reconciles",
    "Reconciliations of a Market's children, by result (ok; retry: kopf tries again; "
    "invalid: the Market cannot be made as written; error: an unexpected failure)",
    ["result"])
STATUS_READINGS = Counter(
    "tradeplane_operator_status_readings",
    "Readings of a Market's replicas and lease for its status, by result (ok, error)",
    ["result"])
MARKET_REPLICAS = Gauge(
    "tradeplane_operator_market_replicas",
    "Replicas of the Market reporting, at the last status reading", MARKET_LABELS)
MARKET_READY_REPLICAS = Gauge(
    "tradeplane_operator_market_ready_replicas",
    "Replicas of the Market caught up with its command stream, at the last status reading",
    MARKET_LABELS)
MARKET_AVAILABLE = Gauge(
    "tradeplane_operator_market_available",
    "1 while a leader serves the Market (its Available condition), at the last reading",
    MARKET_LABELS)

for _result in ("ok", "retry", "invalid", "error"):
    RECONCILES.labels(_result)  # every result's series from the start, at 0
for _result in ("ok", "error"):
    STATUS_READINGS.labels(_result)

_managed: set[tuple[str, str]] = set()
MARKETS.set_function(lambda: len(_managed))


async def reconciling[T](market: Market, work: Awaitable[T]) -> T:
    """``work``, a reconciliation of ``market`` (kopf's errors mapped already), counted
    by how it ended."""
    _managed.add((market.namespace, market.name))
    try:
        result = await work
    except kopf.PermanentError:
        RECONCILES.labels("invalid").inc()
        raise
    except kopf.TemporaryError:
        RECONCILES.labels("retry").inc()
        raise
    except Exception:
        RECONCILES.labels("error").inc()
        raise
    RECONCILES.labels("ok").inc()
    return result


async def reading(market: Market, work: Awaitable[Change]) -> Change:
    """``work``, a status reading of ``market``, counted; what it found, kept as gauges."""
    _managed.add((market.namespace, market.name))
    try:
        change = await work
    except Exception:
        STATUS_READINGS.labels("error").inc()
        raise
    STATUS_READINGS.labels("ok").inc()
    status = change.status
    labels = (market.namespace, market.name)
    MARKET_REPLICAS.labels(*labels).set(status.get("replicas") or 0)
    MARKET_READY_REPLICAS.labels(*labels).set(status.get("readyReplicas") or 0)
    available = any(condition.get("type") == "Available" and condition.get("status") == "True"
                    for condition in status.get("conditions") or [])
    MARKET_AVAILABLE.labels(*labels).set(1 if available else 0)
    return change


def retired(body: kopf.Body) -> None:
    """The Market is gone: it is no longer managed, and its series go with it."""
    namespace, name = str(body["metadata"]["namespace"]), str(body["metadata"]["name"])
    _managed.discard((namespace, name))
    for gauge in (MARKET_REPLICAS, MARKET_READY_REPLICAS, MARKET_AVAILABLE):
        with contextlib.suppress(KeyError):  # never read
            gauge.remove(namespace, name)
