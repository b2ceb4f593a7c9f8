"""What a batch publishes for traders (``MarketData``), from a real engine's events (pure).

Each account's private updates are what ``PublicFormatter.order_event`` says of every
event for that account (docs/protocol.md), gathered in one pass over a batch's events:
the tests hold the one pass to that, for a sweep of several makers, a self-trade, a
cancel, a refusal and a replace.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tests.engine.core.helpers import STP_NONE, Book, Step, buy, cancel, replace, sell
from tradeplane_engine.core import AnyEvent
from tradeplane_engine.core.events import (
    OrderAccepted,
    OrderRejected,
    OrderReplaced,
    OrderUpdate,
    Trade,
)
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.wire import PublicFormatter, account_subject

SETUP = [sell("m1", 2, 100), sell("m2", 3, 101), sell("t", 1, 101, stp=STP_NONE),
         sell("m3", 5, 102), buy("m4", 4, 90)]
BATCH = [buy("t", 7, 101, stp=STP_NONE), cancel("m3", 4), sell("m1", 0, 100),
         replace("m4", 5, price=91)]


def one_command_at_a_time(book: Book, steps: list[Step],
                          formatter: PublicFormatter) -> dict[str, list[dict[str, Any]]]:
    """The updates per account as ``order_event`` gives them, account by account."""
    updates: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        sequence = book.sequence + 1
        events: list[AnyEvent] = book.do(step)
        accounts: dict[str, None] = {}  # every account the events concern, first seen first
        for event in events:
            if isinstance(event, Trade):
                accounts.setdefault(event.maker_account)
                accounts.setdefault(event.taker_account)
            elif isinstance(event, OrderAccepted | OrderUpdate | OrderRejected | OrderReplaced):
                accounts.setdefault(event.account)
        for account in accounts:
            for event in events:
                update = formatter.order_event(event, account)
                if update is not None:
                    updates.setdefault(account, []).append(
                        {**update, "sequence": sequence, "timestamp": sequence * 1_000})
    return updates


def published(book: Book, steps: list[Step]) -> dict[str, dict[str, Any]]:
    market_data = MarketData("btc-usd", PublicFormatter(book.engine.spec))
    for step in steps:
        sequence = book.sequence + 1
        market_data.add(sequence, sequence * 1_000, book.do(step))
    return {subject: msgspec.json.decode(payload) for subject, payload in market_data.messages()}


def test_a_batch_gives_each_account_what_order_event_says_of_each_event() -> None:
    expected = one_command_at_a_time(Book(steps=SETUP), BATCH,
                                     PublicFormatter(Book().engine.spec))
    messages = published(Book(steps=SETUP), BATCH)
    private = {subject: message["events"] for subject, message in messages.items()
               if subject.startswith("tp.acct.")}
    # Accounts in order of first appearance: the taker (its order is accepted first),
    # then the makers it met, then the others.
    assert list(expected) == ["t", "m1", "m2", "m3", "m4"]
    assert list(private) == [account_subject(account) for account in expected]
    assert private == {account_subject(account): updates
                       for account, updates in expected.items()}


def test_a_sweep_tells_each_maker_its_side_and_a_self_trade_once() -> None:
    messages = published(Book(steps=SETUP), BATCH[:1])
    taker = [update for update in messages[account_subject("t")]["events"]
             if update["type"] == "trade"]
    maker = [update for update in messages[account_subject("m2")]["events"]
             if update["type"] == "trade"]
    # t bought from m1 (2 at 100), m2 (3 at 101) and itself (1 at 101): three trades as
    # taker, and its own resting sell's fill told once, as the taker's.
    assert [(update["role"], update["side"], update["price"], update["quantity"])
            for update in taker] == [("taker", "buy", "100", "2"), ("taker", "buy", "101", "3"),
                                     ("taker", "buy", "101", "1")]
    assert [(update["role"], update["side"], update["price"], update["quantity"])
            for update in maker] == [("maker", "sell", "101", "3")]
    assert all(type(update["side"]) is str for update in taker + maker)
