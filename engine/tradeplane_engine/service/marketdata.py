"""What traders see of a batch of commands: L2 deltas, trades and private updates.

Messages are built per batch, not per command, so under load a market publishes a
handful of messages for dozens of orders; at low load a batch is one command and
nothing waits. The L2 delta of a batch carries the new total of every level the batch
touched, with ``sequence`` (the last command that changed the book) and
``prevSequence`` (the one before it, as of the previous delta): a consumer that sees
``prevSequence`` differ from the last delta it applied has missed one. Both numbers
are command sequences, so they mean the same whatever the batching, across restarts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tradeplane_engine.core import AnyEvent, BookLevel, Side, Trade, TradingModeChanged
from tradeplane_engine.wire import PublicFormatter, account_subject, book_subject, trades_subject

_encode = msgspec.json.Encoder().encode


class MarketData:
    """Collects one batch's public and private messages, then hands them over."""

    def __init__(self, market: str, formatter: PublicFormatter) -> None:
        self.market = market
        self.formatter = formatter
        self.book_sequence = 0
        """The last command that changed the book, as far as deltas have told."""
        self.trades = 0
        self.traded_lots = 0
        self.traded_notional = 0
        """Trades published so far, their lots and their price ticks × lots: running
        totals the engine's metrics read when scraped (nothing to count per batch)."""
        self._book_subject = book_subject(market)
        self._trades_subject = trades_subject(market)
        self._reset()

    def _reset(self) -> None:
        self._levels: dict[tuple[Side, int], BookLevel] = {}
        self._mode: str | None = None
        self._last_change = 0
        self._last_change_time = 0
        self._trades: list[dict[str, Any]] = []
        self._private: dict[str, list[dict[str, Any]]] = {}

    def replayed(self, sequence: int, events: list[AnyEvent]) -> None:
        """A command applied again after a restart: nothing to publish, but the book moved."""
        if any(type(event) is BookLevel or type(event) is TradingModeChanged
               for event in events):
            self.book_sequence = sequence

    def add(self, sequence: int, timestamp: int, events: list[AnyEvent]) -> None:
        formatter = self.formatter
        changed = False
        for event in events:
            if isinstance(event, BookLevel):
                self._levels[(event.side, event.price)] = event
                changed = True
            elif isinstance(event, Trade):
                self.trades += 1
                self.traded_lots += event.quantity
                self.traded_notional += event.price * event.quantity
                trade = formatter.trade(event)
                trade["sequence"] = sequence
                trade["timestamp"] = timestamp
                self._trades.append(trade)
            elif isinstance(event, TradingModeChanged):
                self._mode = event.mode.value
                changed = True
        if changed:
            self._last_change, self._last_change_time = sequence, timestamp
        formatter.private_updates(events, sequence, timestamp, self._private)

    def messages(self) -> list[tuple[str, bytes]]:
        """The batch's messages (private updates, trades, the L2 delta); starts a new batch."""
        market = self.market
        out = [(account_subject(account), _encode({"market": market, "events": updates}))
               for account, updates in self._private.items()]
        if self._trades:
            out.append((self._trades_subject, _encode({"market": market,
                                                       "trades": self._trades})))
        if self._last_change:
            level = self.formatter.level
            bids = sorted((event for event in self._levels.values() if event.side is Side.BUY),
                          key=lambda event: -event.price)
            asks = sorted((event for event in self._levels.values() if event.side is Side.SELL),
                          key=lambda event: event.price)
            delta: dict[str, Any] = {
                "market": market, "sequence": self._last_change,
                "prevSequence": self.book_sequence, "timestamp": self._last_change_time,
                "bids": [level(event) for event in bids], "asks": [level(event) for event in asks],
            }
            if self._mode is not None:
                delta["mode"] = self._mode
            out.append((self._book_subject, _encode(delta)))
            self.book_sequence = self._last_change
        self._reset()
        return out
