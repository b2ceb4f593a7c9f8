"""What PostgreSQL knows, answered over NATS: order status and an account's trades.

The recorder process serves these for its markets (``tp.history.<market>.order`` and
``tp.history.<market>.trades``), so the gateway stays stateless and never touches the
database: it asks the engine first (open and recent orders) and this service for the
rest, so a client that lost a reply can always learn what became of its order.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.store.database import DATABASE_UNAVAILABLE
from tradeplane_engine.wire import (
    HISTORY_QUEUE,
    MarketDefinition,
    OrderRecord,
    PublicFormatter,
    history_subject,
    refused_place,
)

log = logging.getLogger(__name__)

MAX_TRADES = 500

OPEN_STATUSES = ("new", "partiallyFilled")

_REFUSED_PLACE = (
    "(command = 'place' OR (command IS NULL"
    f" AND code NOT IN ({int(RejectCode.UNKNOWN_ORDER)},"
    f" {int(RejectCode.REPLACE_QUANTITY_TOO_LOW)})))")
"""A rejection that is an order's state: a refused place. A rejection recorded before
the engine said which command it refused (``command`` NULL) counts unless its code is
one only a cancel or a replace is refused with."""


class OrderQuery(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    account: str
    order_id: int = 0
    client_order_id: str = ""


class TradesQuery(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    account: str
    before: int | None = None
    """Only trades with a smaller trade id (the ``next`` of the previous page)."""
    limit: int = 100


class History:
    """Serves one market's queries from PostgreSQL."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, definition: MarketDefinition) -> None:
        self.nc = nc
        self.pool = pool
        self.market = definition.name
        self.formatter = PublicFormatter(definition.spec())
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self._subscriptions = [
            await self.nc.subscribe(history_subject(self.market, "order"),
                                    queue=HISTORY_QUEUE, cb=self._on_order),
            await self.nc.subscribe(history_subject(self.market, "trades"),
                                    queue=HISTORY_QUEUE, cb=self._on_trades),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    async def order(self, query: OrderQuery) -> dict[str, Any] | None:
        """An order by id, or by client order id: the open order that carries it, else
        the one that carried it and ended last — a refused place, which ends as it is
        sequenced, included (the engine answers the same from its memory). An
        ``OrderRecord``, as JSON-ready builtins."""
        async with self.pool.acquire() as connection:
            if query.order_id:
                row = await connection.fetchrow(
                    "SELECT * FROM orders WHERE market = $1 AND account = $2 AND order_id = $3",
                    self.market, query.account, query.order_id)
            else:
                # An order's client order id is free again once the order is not open,
                # so orders carrying one follow each other: the newest is the last to end.
                row = await connection.fetchrow(
                    "SELECT * FROM orders WHERE market = $1 AND account = $2"
                    " AND client_order_id = $3 ORDER BY order_id DESC LIMIT 1",
                    self.market, query.account, query.client_order_id)
                if row is None or row["status"] not in OPEN_STATUSES:
                    rejected = await connection.fetchrow(
                        "SELECT code, reason FROM rejections WHERE market = $1"
                        " AND account = $2 AND client_order_id = $3 AND order_id = 0"
                        f" AND sequence > $4 AND {_REFUSED_PLACE}"
                        " ORDER BY sequence DESC, index DESC LIMIT 1",
                        self.market, query.account, query.client_order_id,
                        0 if row is None else row["updated_sequence"])
                    if rejected is not None:
                        return _builtins(refused_place(
                            query.client_order_id, RejectCode(rejected["code"]),
                            rejected["reason"]))
        if row is None:
            return None
        # The engine's answer, field for field (the table has no stp).
        return _builtins(self.formatter.order(
            row["order_id"], row["client_order_id"], row["status"], side=row["side"],
            price=row["price"], quantity=row["quantity"], quote_amount=row["quote_amount"],
            filled=row["filled"], remaining=row["remaining"], order_type=row["order_type"],
            time_in_force=row["time_in_force"], post_only=row["post_only"],
            reason=row["reason"] or None))

    async def trades(self, query: TradesQuery) -> dict[str, Any]:
        limit = max(1, min(MAX_TRADES, query.limit))
        before = query.before if query.before is not None else 2**63 - 1
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT * FROM trades WHERE market = $1 AND trade_id < $3"
                " AND (maker_account = $2 OR taker_account = $2)"
                " ORDER BY trade_id DESC LIMIT $4",
                self.market, query.account, before, limit)
        trades = []
        for row in rows:
            taker = row["taker_account"] == query.account
            aggressor = row["aggressor_side"]
            trades.append({
                "tradeId": row["trade_id"], "sequence": row["sequence"],
                "timestamp": row["traded_at"],
                "orderId": row["taker_order_id"] if taker else row["maker_order_id"],
                "role": "taker" if taker else "maker",
                "side": aggressor if taker else ("sell" if aggressor == "buy" else "buy"),
                "price": self.formatter.price(row["price"]),
                "quantity": self.formatter.quantity(row["quantity"]),
            })
        page: dict[str, Any] = {"market": self.market, "trades": trades}
        if len(rows) == limit:
            page["next"] = rows[-1]["trade_id"]
        return page

    async def _on_order(self, msg: Msg) -> None:
        try:
            answer: dict[str, Any] = {"order": await self.order(
                msgspec.json.decode(msg.data, type=OrderQuery))}
        except (msgspec.MsgspecError, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as exc:
            answer = {"error": type(exc).__name__}
        await msg.respond(msgspec.json.encode(answer))

    async def _on_trades(self, msg: Msg) -> None:
        try:
            answer = await self.trades(msgspec.json.decode(msg.data, type=TradesQuery))
        except (msgspec.MsgspecError, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as exc:
            answer = {"error": type(exc).__name__}
        await msg.respond(msgspec.json.encode(answer))


def _builtins(order: OrderRecord) -> dict[str, Any]:
    """An order answer as plain JSON-ready values (what ``order`` returns)."""
    answer: dict[str, Any] = msgspec.to_builtins(order)
    return answer
