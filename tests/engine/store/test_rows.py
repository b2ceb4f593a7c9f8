"""The recorder's rows (pure, no database): an order's row says what the engine holds.

``Table`` applies the rows to a dictionary the way ``recorder.record`` applies them to
PostgreSQL (new orders inserted, changes merged with ``coalesce``), so the tests can
hold the ``orders`` table against the engine's own book after every batch.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.engine.core.helpers import DECREMENT, Book, Step, buy, replace, sell
from tests.engine.core.streams import streams
from tradeplane_engine.core import AnyCommand, Engine, MarketSpec
from tradeplane_engine.store.rows import ORDER_CHANGES, ORDERS, Rows
from tradeplane_engine.wire import EventBatch, encode_events


class Table:
    """The ``orders`` table, by order id, written as the recorder writes it."""

    def __init__(self) -> None:
        self.orders: dict[int, dict[str, Any]] = {}
        self.history: list[tuple[Any, ...]] = []

    def write(self, batch: list[tuple[int, list[Any]]]) -> None:
        """One recorder batch: (command sequence, its events) for each command in it."""
        rows = Rows()
        for sequence, events in batch:
            message = EventBatch("m", sequence, sequence * 1_000, events)
            rows.add(sequence, message, encode_events(message).decode())
        for row in rows.order_rows():
            order = dict(zip(ORDERS, row, strict=True))
            self.orders[order["order_id"]] = order
        for row in rows.change_rows():
            change = dict(zip(ORDER_CHANGES, row, strict=True))
            order = self.orders[change["order_id"]]
            for column in ("status", "filled", "remaining", "price", "quantity", "reason"):
                if change[column] is not None:  # coalesce(c.column, o.column)
                    order[column] = change[column]
            order["updated_sequence"] = change["updated_sequence"]
        self.history.extend(rows.history)

    def check(self, engine: Engine) -> None:
        """Every open order as the book has it; every other one finished, nothing open."""
        open_orders = {order.order_id: order for owner in engine.accounts.values()
                       for order in owner.by_id.values()}
        for order_id, row in self.orders.items():
            order = open_orders.get(order_id)
            if order is None:
                assert (row["status"], row["remaining"]) in (("filled", 0), ("canceled", 0)), row
                continue
            assert row["status"] == ("partiallyFilled" if order.filled else "new"), row
            assert (row["filled"], row["remaining"]) == (order.filled, order.remaining), row
            assert (row["price"], row["quantity"]) == (order.price, order.quantity), row
            assert row["reason"] is None, row
        assert set(open_orders) <= set(self.orders)


def recorded(setup: list[Step], step: Step) -> tuple[Book, Table]:
    """The setup in one batch, then ``step`` in a second one."""
    book, table = Book(), Table()
    table.write([(book.sequence + 1, book.do(command)) for command in setup])
    table.write([(book.sequence + 1, book.do(step))])
    return book, table


def test_an_incoming_order_reduced_by_a_decrement_is_recorded_open_with_what_is_left() -> None:
    """Regression: its row kept the full quantity open (no event told of the decrement)."""
    book, table = recorded([sell("a", 4, 9)], buy("a", 5, 9, stp=DECREMENT))
    table.check(book.engine)
    assert (table.orders[2]["status"], table.orders[2]["filled"],
            table.orders[2]["remaining"]) == ("new", 0, 1)
    assert (table.orders[1]["status"], table.orders[1]["reason"]) == ("canceled", "stp")
    assert [(row[4], row[5], row[6], row[8], row[11]) for row in table.history[-2:]] == [
        (1, "orderUpdate", "canceled", 0, "stp"), (2, "orderUpdate", "reduced", 1, "stp")]


def test_an_incoming_order_filled_then_reduced_is_recorded_partially_filled() -> None:
    book, table = recorded([sell("b", 2, 9), sell("a", 4, 9)], buy("a", 10, 9, stp=DECREMENT))
    table.check(book.engine)
    assert (table.orders[3]["status"], table.orders[3]["filled"],
            table.orders[3]["remaining"]) == ("partiallyFilled", 2, 4)


def test_a_replace_reduced_by_a_decrement_is_recorded_with_what_is_left() -> None:
    book, table = recorded([sell("a", 4, 9), buy("a", 5, 8, stp=DECREMENT)],
                           replace("a", 2, price=9))
    table.check(book.engine)
    assert (table.orders[2]["status"], table.orders[2]["remaining"]) == ("new", 1)


def test_a_reduced_maker_is_recorded_open() -> None:
    """A resting order a decrement reduced is open: its row says so (it said ``reduced``,
    which no open-orders query counted as open)."""
    book, table = recorded([sell("a", 10, 9)], buy("a", 6, 9, stp=DECREMENT))
    table.check(book.engine)
    assert (table.orders[1]["status"], table.orders[1]["remaining"]) == ("new", 4)


@given(streams(), st.data())
def test_the_orders_table_holds_what_the_engine_holds(
        stream: tuple[MarketSpec, list[AnyCommand]], data: st.DataObject) -> None:
    spec, commands = stream
    engine, table = Engine(spec), Table()
    batch: list[tuple[int, list[Any]]] = []
    for command in commands:
        batch.append((command.sequence, engine.apply(command)))
        if data.draw(st.booleans(), label="end the batch here"):
            table.write(batch)
            batch = []
            table.check(engine)
    table.write(batch)
    table.check(engine)
