"""The engine's Prometheus metrics, per market replica (labels ``market`` and ``replica``).

A market matches thousands of commands a second on one core, so the hot path pays for
its metrics once per batch, never per order:

- what a batch does (commands applied, the time matching took) goes to label children
  bound when the service is made (``MarketMetrics.applied``): no label lookup, no
  string formatting, one counter and two histogram updates per batch;
- what the service's state already holds (its role, failovers, trades and volume, the
  book's depth, the last sequence, the lag its status report measured) is read when
  Prometheus scrapes, by one collector over the live services: the hot path does
  nothing for those at all.

Trades and volume are counted by the replica that published them (the leader), so a
sum over replicas is the market's; commands applied and match latency are every
replica's own work (a standby applies every command too). Volume is a float here and
only here: the core counts integer lots, converted with the market's lot and tick sizes
when scraped (base units, and quote units for the notional).

The engine serves these on its health port (``GET /metrics``, see ``health``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from tradeplane_engine.core.book import BookSide
    from tradeplane_engine.service.market import MarketService

LABELS = ("market", "replica")

MATCH_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                 0.05, 0.1, 0.25, 1.0)
"""Seconds to apply a batch: one command takes microseconds, a full batch (512) a few
milliseconds; above that the engine is in trouble."""
COMMAND_BUCKETS = (0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001,
                   0.00025, 0.0005, 0.001, 0.01)

MATCH_SECONDS = Histogram(
    "tradeplane_engine_match_seconds",
    "Time to apply one batch of commands to the book (decoding and matching, not "
    "publishing)", LABELS, buckets=MATCH_BUCKETS)
COMMAND_SECONDS = Histogram(
    "tradeplane_engine_match_command_seconds",
    "Time to apply one command: a batch's match time over its size, observed once per "
    "batch", LABELS, buckets=COMMAND_BUCKETS)
COMMANDS_APPLIED = Counter(
    "tradeplane_engine_commands_applied",
    "Commands applied to the book (replayed ones and rejected ones included)", LABELS)


class MarketMetrics:
    """One market replica's metric children, bound once; the service calls
    ``applied`` per batch and ``report_lag`` from its status report."""

    __slots__ = ("_batch", "_command", "_commands", "base_unit", "lag", "quote_unit")

    def __init__(self, service: MarketService) -> None:
        labels = (service.market, service.replica)
        self._commands = COMMANDS_APPLIED.labels(*labels)
        self._batch = MATCH_SECONDS.labels(*labels)
        self._command = COMMAND_SECONDS.labels(*labels)
        definition = service.definition
        self.base_unit = float(Decimal(definition.lot_size))
        """Base units in one lot: traded lots × this is the base volume."""
        self.quote_unit = float(Decimal(definition.tick_size) * Decimal(definition.lot_size))
        """Quote units in one tick × lot: price ticks × lots × this is the notional."""
        self.lag: int | None = None
        """Commands in the stream not yet applied, as the last status report measured."""
        LIVE.watch(service)

    def applied(self, commands: int, seconds: float) -> None:
        """A batch of ``commands`` took ``seconds`` to apply."""
        if commands:
            self._commands.inc(commands)
            self._batch.observe(seconds)
            self._command.observe(seconds / commands)

    def report_lag(self, lag: int) -> None:
        self.lag = lag


class LiveServices:
    """The collector of what the running services' state holds, read at each scrape.

    Services are held by weak reference, keyed by (market, replica): a service that is
    gone drops out, and a newer one of the same market and replica (a test starting an
    engine again in one process) replaces the older.
    """

    def __init__(self) -> None:
        self._services: dict[tuple[str, str], weakref.ref[MarketService]] = {}

    def watch(self, service: MarketService) -> None:
        self._services[(service.market, service.replica)] = weakref.ref(service)

    def describe(self) -> Iterable[Metric]:
        """The names this collector serves (without reading any service), so the
        registry can refuse a second definition of one of them."""
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        leader, ready, sequence, lag, failovers, trades, base, quote, levels, orders = (
            families)
        # A copy first: a scrape from another thread (prometheus_client's own HTTP
        # server, in tests) must not see the dict change under it.
        for key, reference in list(self._services.items()):
            service = reference()
            if service is None:
                if self._services.get(key) is reference:
                    del self._services[key]
                continue
            labels = list(key)
            metrics = service.metrics
            leader.add_metric(labels, 1.0 if service.leading else 0.0)
            ready.add_metric(labels, 1.0 if service.ready.is_set() else 0.0)
            engine = service.engine
            sequence.add_metric(labels, engine.last_sequence)
            if metrics.lag is not None:
                lag.add_metric(labels, metrics.lag)
            failovers.add_metric(labels, service.failovers)
            data = service.market_data
            trades.add_metric(labels, data.trades)
            base.add_metric(labels, data.traded_lots * metrics.base_unit)
            quote.add_metric(labels, data.traded_notional * metrics.quote_unit)
            for side_name, side in (("bid", engine.bids), ("ask", engine.asks)):
                count, resting = _depth(side)
                levels.add_metric([*labels, side_name], count)
                orders.add_metric([*labels, side_name], resting)
        return families


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                         GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily,
                         CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
                         GaugeMetricFamily]:
    sides = [*LABELS, "side"]
    return (
        GaugeMetricFamily("tradeplane_engine_leader",
                          "1 while this replica leads the market, 0 while it stands by",
                          labels=LABELS),
        GaugeMetricFamily("tradeplane_engine_ready",
                          "1 once the replica has caught up with its command stream",
                          labels=LABELS),
        GaugeMetricFamily("tradeplane_engine_sequence",
                          "The last command sequence the replica applied", labels=LABELS),
        GaugeMetricFamily("tradeplane_engine_lag_commands",
                          "Commands in the market's command stream the replica has not "
                          "applied yet (measured every second)", labels=LABELS),
        CounterMetricFamily("tradeplane_engine_failovers",
                            "Times this replica took the lead (its first election "
                            "included)", labels=LABELS),
        CounterMetricFamily("tradeplane_engine_trades",
                            "Trades this replica published as the leader", labels=LABELS),
        CounterMetricFamily("tradeplane_engine_traded_base",
                            "Base asset traded, in base units (the trades' quantities)",
                            labels=LABELS),
        CounterMetricFamily("tradeplane_engine_traded_quote",
                            "Quote asset traded, in quote units (price × quantity)",
                            labels=LABELS),
        GaugeMetricFamily("tradeplane_engine_book_levels",
                          "Price levels in the book, per side", labels=sides),
        GaugeMetricFamily("tradeplane_engine_book_orders",
                          "Resting orders in the book, per side", labels=sides),
    )


def _depth(side: BookSide) -> tuple[int, int]:
    """(levels, resting orders) of one side: each level keeps its live orders' count.

    ``list()`` copies the levels in one step that no other thread interleaves with, so
    a scrape from another thread reads a consistent set of levels.
    """
    levels = list(side.levels.values())
    return len(levels), sum(level.count for level in levels)


LIVE = LiveServices()
REGISTRY.register(LIVE)

