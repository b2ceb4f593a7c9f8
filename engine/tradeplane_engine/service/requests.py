"""What the leader of a market answers: an order's status, an account's open orders,
the book's snapshot, the market's status, and a planned switchover.

Only the leader subscribes to these subjects (``serve`` when it takes the lead, ``stop``
when it gives it up), so a request made while no replica leads fails at once (no
responders) rather than timing out. The answers come from the live book and the
memory of finished orders; the gateway turns them into replies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tradeplane_engine.access import is_inbox
from tradeplane_engine.core import OrderType, TimeInForce
from tradeplane_engine.core.events import open_status
from tradeplane_engine.wire import (
    MAX_REQUEST,
    OrderRecord,
    book_snapshot_subject,
    engine_subject,
)
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

if TYPE_CHECKING:
    from tradeplane_engine.core.book import Order
    from tradeplane_engine.service.market import MarketService

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


class SwitchoverRequest(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    """The standby to lead next."""


class StatusQuery(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    account: str
    order_id: int = 0
    client_order_id: str = ""


class LeaderRequests:
    """The leader's request handlers, answering from ``service``'s live state."""

    def __init__(self, service: MarketService) -> None:
        self.service = service
        self._subscriptions: list[Subscription] = []

    async def serve(self) -> None:
        """Subscribe to the leader's subjects."""
        service, market = self.service, self.service.market
        handlers = {
            book_snapshot_subject(market): self._on_snapshot,
            engine_subject(market, "status"): service.reports.on_status,
            engine_subject(market, "order"): self._on_order,
            engine_subject(market, "openOrders"): self._on_open_orders,
            engine_subject(market, "switchover"): self._on_switchover,
        }
        self._subscriptions = [await service.nc.subscribe(subject, cb=handler)
                               for subject, handler in handlers.items()]

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def order_status(self, query: StatusQuery) -> OrderRecord | None:
        """An order's current state: open in the book, or recently finished.

        By client order id (which may be used again once its order finished): the open
        order that carries it, else the one that carried it and ended last (a refused
        place ends as it is sequenced), as the recorder's history answers too.
        """
        service = self.service
        order = service.engine.open_order(query.account, query.order_id,
                                          query.client_order_id)
        if order is not None:
            return self._open_order(order)
        return service.memory.finished(query.account, query.order_id, query.client_order_id)

    def open_orders(self, account: str) -> list[OrderRecord]:
        owner = self.service.engine.accounts.get(account)
        if owner is None:
            return []
        return [self._open_order(order)
                for order in sorted(owner.by_id.values(), key=lambda order: order.order_id)]

    def _open_order(self, order: Order) -> OrderRecord:
        """An order in the book, as status and open-orders replies show it (a resting
        order is a GTC limit order)."""
        return self.service.formatter.order(
            order.order_id, order.client_order_id, open_status(order.filled),
            side=order.side.value, price=order.price, quantity=order.quantity,
            quote_amount=0, filled=order.filled, remaining=order.remaining,
            order_type=OrderType.LIMIT.value, time_in_force=TimeInForce.GTC.value,
            post_only=order.post_only, stp=order.stp.value)

    async def _on_open_orders(self, msg: Msg) -> None:
        await self._answer(msg, lambda query: {"orders": self.open_orders(query.account)})

    async def _on_order(self, msg: Msg) -> None:
        await self._answer(msg, lambda query: {"order": self.order_status(query)})

    async def _answer(self, msg: Msg,
                      answer: Callable[[StatusQuery], dict[str, Any]]) -> None:
        """A query about an account's orders, answered from the live book."""
        try:
            query = msgspec.json.decode(msg.data, type=StatusQuery)
        except msgspec.MsgspecError as exc:
            await msg.respond(_encode({"error": str(exc)}))
            return
        service = self.service
        if not service.leading:
            return  # the leader answers
        if not service.ready.is_set():
            await msg.respond(_encode({"error": "recovering"}))
            return
        await msg.respond(_encode({"sequence": service.engine.last_sequence,
                                   **answer(query)}))

    async def _on_snapshot(self, msg: Msg) -> None:
        service = self.service
        if not service.leading:
            return  # the leader answers
        if not is_inbox(msg.reply):
            log.warning("%s: book snapshot request with reply subject %r; ignored",
                        service.market, msg.reply[:120])
            UNTRUSTED_SKIPPED.labels("engine", "reply subject").inc()
            return
        if not service.ready.is_set():
            await msg.respond(_encode({"error": "recovering", "market": service.market}))
            return
        engine = service.engine
        depth = 1_000_000
        book = engine.l2(depth)
        price, quantity = service.formatter.price, service.formatter.quantity
        await msg.respond(_encode({
            "market": service.market, "sequence": engine.last_sequence,
            "mode": engine.mode.value,
            "bids": [[price(level.price), quantity(level.quantity)] for level in book.bids],
            "asks": [[price(level.price), quantity(level.quantity)] for level in book.asks],
        }))

    async def _on_switchover(self, msg: Msg) -> None:
        """A planned switchover: hand the lease to a named standby between two batches."""
        service = self.service
        if not service.leading or service.lease is None:
            return  # the leader answers
        if not msg.reply:
            return  # nobody to tell the outcome: an admin act is done only when asked
        if len(msg.data) > MAX_REQUEST:
            await msg.respond(_encode({"error": f"a request over {MAX_REQUEST} bytes"}))
            return
        try:
            target = msgspec.json.decode(msg.data, type=SwitchoverRequest).to
        except msgspec.MsgspecError as exc:
            await msg.respond(_encode({"error": str(exc)[:200]}))
            return
        if target == service.replica:
            await msg.respond(_encode({"error": f"{target} leads already"}))
            return
        refusal = await service.hand_over(target)
        if refusal:
            await msg.respond(_encode({"error": refusal}))
            return
        await msg.respond(_encode({"from": service.replica, "to": target,
                                   "epoch": service.epoch}))
