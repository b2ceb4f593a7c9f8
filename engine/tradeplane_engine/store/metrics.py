"""The recorder's write metrics, per market: what each batch wrote and how long it took.

The recorder's lag and position gauges (``tradeplane_recorder_lag_events``,
``tradeplane_recorder_position``) stay beside the code that sets them in ``recorder``;
this adds what its writes cost. A batch is one transaction, so everything here is
counted once per batch, from the sizes ``Rows`` already holds: nothing per event.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tradeplane_engine.store.rows import Rows

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds for one batch's transaction: milliseconds for a few hundred rows on a healthy
database, seconds when it struggles."""

EVENTS_WRITTEN = Counter(
    "tradeplane_recorder_events_written",
    "Commands' events (a journal row each) written to PostgreSQL", ["market"])
ROWS_WRITTEN = Counter(
    "tradeplane_recorder_rows_written",
    "Rows inserted or updated in PostgreSQL, by table", ["market", "table"])
WRITE_SECONDS = Histogram(
    "tradeplane_recorder_write_seconds",
    "Time to write one batch of events in one transaction", ["market"],
    buckets=WRITE_BUCKETS)


class RecorderMetrics:
    """One market's children, bound once; ``written`` after each committed batch."""

    __slots__ = ("_events", "_history", "_journal", "_orders", "_rejections", "_seconds",
                 "_trades")

    def __init__(self, market: str) -> None:
        self._events = EVENTS_WRITTEN.labels(market)
        self._journal = ROWS_WRITTEN.labels(market, "journal")
        self._orders = ROWS_WRITTEN.labels(market, "orders")
        self._history = ROWS_WRITTEN.labels(market, "order_history")
        self._trades = ROWS_WRITTEN.labels(market, "trades")
        self._rejections = ROWS_WRITTEN.labels(market, "rejections")
        self._seconds = WRITE_SECONDS.labels(market)

    def written(self, rows: Rows, seconds: float) -> None:
        """A batch's transaction committed after ``seconds``."""
        self._events.inc(len(rows.journal))
        self._journal.inc(len(rows.journal))
        self._orders.inc(len(rows.new_orders) + len(rows.changes))
        self._history.inc(len(rows.history))
        self._trades.inc(len(rows.trades))
        self._rejections.inc(len(rows.rejections))
        self._seconds.observe(seconds)
