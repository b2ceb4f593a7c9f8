"""What a command's reply says of the order: its state from the sender's events (pure).

The events come from a real engine and go through the public formatter, as the
gateway's result replies do.
"""

from __future__ import annotations

import pytest

from tests.engine.core.helpers import DECREMENT, Book, Step, buy, replace, sell
from tradeplane_engine.core import Place
from tradeplane_engine.wire import PublicFormatter
from tradeplane_gateway.protocol import OrderState
from tradeplane_gateway.results import place_summary, reference_summary


def reply_state(setup: list[Step], step: Step) -> OrderState | None:
    """The order state the gateway would reply with for ``step``, sent by account "a"."""
    book = Book(steps=setup)
    formatter = PublicFormatter(book.engine.spec)
    command = step(book.sequence + 1, 0)
    events = [update for event in book.do(step)
              if (update := formatter.order_event(event, "a")) is not None]
    if isinstance(command, Place):
        order, _ = place_summary(command, events, formatter)
    else:
        order, _ = reference_summary(events)
    assert any(event.get("status") == "reduced" for event in events), "the update is in events"
    return order


@pytest.mark.parametrize(("setup", "step", "state"), [
    pytest.param([sell("a", 4, 9)], buy("a", 5, 9, stp=DECREMENT), ("new", "0", "1"),
                 id="place: reduced, nothing traded"),
    pytest.param([sell("b", 2, 9), sell("a", 4, 9)], buy("a", 10, 9, stp=DECREMENT),
                 ("partiallyFilled", "2", "4"), id="place: traded, then reduced"),
    pytest.param([sell("a", 4, 9), buy("a", 5, 8, stp=DECREMENT)], replace("a", 2, price=9),
                 ("new", "0", "1"), id="crossing replace: reduced"),
])
def test_a_reduced_order_is_replied_as_open_with_what_is_left(
        setup: list[Step], step: Step, state: tuple[str, str, str]) -> None:
    """``reduced`` is an event; the order it reduced is open (``new`` or
    ``partiallyFilled``, as a status query says), with the quantity the decrement left."""
    order = reply_state(setup, step)
    assert order is not None
    assert (order.status, order.filled_quantity, order.remaining_quantity) == state
    assert order.reason is None
