"""The Python client SDK: trade on tradeplane from asyncio.

    async with tradeplane.connect("nats://127.0.0.1:4222", credentials="alice.json") as client:
        reply = await client.place("sol-usdt", "buy", "1.5", "101.25")
        print(reply.order.status, reply.fills)
        async with client.book("sol-usdt") as book:
            print(book.bids[:5], book.asks[:5])

Every method is a thin layer over the NATS protocol of docs/protocol.md; anything
here can be done from any language with a plain NATS client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tradeplane_engine.access import Credentials, trader_inbox
from tradeplane_engine.connection import server_urls
from tradeplane_engine.wire import (
    account_subject,
    api_subject,
    balances_request_subject,
    balances_subject,
    is_account,
    trades_subject,
)
from tradeplane_gateway.errors import ConnectionLostError, RequestError
from tradeplane_gateway.local_book import LocalBook
from tradeplane_gateway.protocol import Balance, Reply, decode_reply
from tradeplane_shared import telemetry

_encode = msgspec.json.Encoder().encode
_tracer = trace.get_tracer("tradeplane.sdk")
"""Follows the application's tracer provider (a no-op until one is installed)."""


class Client:
    """One trader's account on one NATS connection."""

    def __init__(self, nc: NatsClient, account: str, *, timeout: float = 10.0,
                 response: str = "result") -> None:
        if not is_account(account):
            raise ValueError(f"invalid account name {account!r}")
        self.nc = nc
        self.account = account
        self.timeout = timeout
        self.response = response

    async def request(self, verb: str, body: dict[str, Any]) -> Reply:
        """Send one request; the reply, or RequestError with its code.

        With an OpenTelemetry tracer provider installed, the request is a span whose
        context travels in the message's headers: the order's trace starts here."""
        subject = api_subject(self.account, verb)
        tracer = telemetry.tracer if telemetry.enabled else _tracer
        with tracer.start_as_current_span(
                f"send tp.api.order.{verb}", kind=SpanKind.PRODUCER,
                attributes=telemetry.messaging("send", subject, **{
                    "tradeplane.account": self.account,
                    "tradeplane.market": body.get("market")})) as span:
            reply = await self._request(subject, body)
            if reply.sequence:
                span.set_attribute("tradeplane.sequence", reply.sequence)
            if reply.order is not None:
                span.set_attribute("tradeplane.order_id", reply.order.order_id)
            return reply

    async def _request(self, subject: str, body: dict[str, Any]) -> Reply:
        payload = _encode({key: value for key, value in body.items() if value is not None})
        headers: dict[str, str] = {}
        telemetry.inject(headers)
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout,
                                        headers=headers or None)
        except NoRespondersError as exc:
            raise ConnectionLostError("no gateway is serving requests") from exc
        except NatsTimeout as exc:
            raise ConnectionLostError(f"no reply within {self.timeout} s") from exc
        reply = decode_reply(msg.data)
        if not reply.ok:
            assert reply.error is not None
            current = trace.get_current_span()
            current.set_attribute(telemetry.REJECT_CODE, reply.error.code)
            current.set_status(Status(StatusCode.ERROR, reply.error.name))
            raise RequestError(reply.error.code, reply.error.name, reply.error.reason,
                               reply.sequence, reply.client_order_id, reply.order)
        return reply

    async def place(self, market: str, side: str, quantity: str | None = None,
                    price: str | None = None, *, type: str = "limit",
                    time_in_force: str | None = None, post_only: bool | None = None,
                    stp: str | None = None, client_order_id: str | None = None,
                    quote_amount: str | None = None, response: str | None = None) -> Reply:
        """A new order. Quantities and prices are decimal strings ("1.5", "101.25")."""
        return await self.request("place", {
            "market": market, "side": side, "type": type, "quantity": quantity, "price": price,
            "quoteAmount": quote_amount, "timeInForce": time_in_force, "postOnly": post_only,
            "stp": stp, "clientOrderId": client_order_id,
            "response": response or self.response,
        })

    async def cancel(self, market: str, order_id: int | None = None, *,
                     client_order_id: str | None = None, response: str | None = None) -> Reply:
        return await self.request("cancel", {
            "market": market, "orderId": order_id, "clientOrderId": client_order_id,
            "response": response or self.response,
        })

    async def replace(self, market: str, order_id: int | None = None, *,
                      client_order_id: str | None = None, price: str | None = None,
                      quantity: str | None = None, response: str | None = None) -> Reply:
        """New price and/or new total quantity (filled part included)."""
        return await self.request("replace", {
            "market": market, "orderId": order_id, "clientOrderId": client_order_id,
            "price": price, "quantity": quantity, "response": response or self.response,
        })

    async def cancel_all(self, market: str, side: str | None = None, *,
                         response: str | None = None) -> Reply:
        return await self.request("cancelAll", {"market": market, "side": side,
                                                "response": response or self.response})

    async def status(self, market: str, order_id: int | None = None, *,
                     client_order_id: str | None = None) -> Reply:
        return await self.request("status", {"market": market, "orderId": order_id,
                                             "clientOrderId": client_order_id})

    async def open_orders(self, market: str) -> Reply:
        """The account's open orders in the market (``reply.orders``), from its engine."""
        return await self.request("openOrders", {"market": market})

    async def trade_history(self, market: str, *, before: int | None = None,
                            limit: int = 100) -> Reply:
        """The account's trades, newest first (``reply.trades``); page on with
        ``before=reply.next``. Needs a recorder (PostgreSQL)."""
        return await self.request("trades", {"market": market, "before": before,
                                             "limit": limit})

    async def balances(self) -> dict[str, Balance]:
        """The account's balances by asset (``available`` and ``held``, decimal strings),
        on an exchange that keeps them (docs/ledger.md)."""
        reply = await self._request(balances_request_subject(self.account), {})
        return reply.balances or {}

    async def balance_updates(self) -> AsyncGenerator[dict[str, Any]]:
        """The account's balances after each change, as its ledger shard publishes them."""
        subscription = await self.nc.subscribe(balances_subject(self.account))
        try:
            async for msg in subscription.messages:
                yield msgspec.json.decode(msg.data)
        finally:
            await subscription.unsubscribe()

    async def order_updates(self) -> AsyncIterator[dict[str, Any]]:
        """This account's private updates, in every market, as they happen."""
        subscription = await self.nc.subscribe(account_subject(self.account))
        try:
            async for msg in subscription.messages:
                yield msgspec.json.decode(msg.data)
        finally:
            await subscription.unsubscribe()

    async def trades(self, market: str) -> AsyncIterator[dict[str, Any]]:
        """The market's public trades as they happen (one message per matching command)."""
        subscription = await self.nc.subscribe(trades_subject(market))
        try:
            async for msg in subscription.messages:
                yield msgspec.json.decode(msg.data)
        finally:
            await subscription.unsubscribe()

    def book(self, market: str) -> LocalBook:
        """A local L2 book that keeps itself in step (use with ``async with``)."""
        return LocalBook(self.nc, market, timeout=self.timeout)


@asynccontextmanager
async def connect(servers: str | list[str] = "nats://127.0.0.1:4222", *,
                  account: str | None = None, secret: str | None = None,
                  credentials: str | Path | None = None, timeout: float = 10.0,
                  response: str = "result", **options: Any) -> AsyncIterator[Client]:
    """Connect to NATS as ``account`` with its ``secret``, or with a ``credentials`` file
    (``{"user": account, "password": secret}``, as ``tradeplane accounts create`` writes
    it). Replies come to the account's own inboxes (``_INBOX.<account>``), the only ones
    a trader may read. Other ``options`` go to ``nats.connect`` (TLS, callbacks...)."""
    if credentials is not None:  # a trader's, or a service's that may act as ``account``
        loaded = Credentials.load(credentials)
        account = account or loaded.user
        options.setdefault("user", loaded.user)
        options.setdefault("password", loaded.password)
    elif secret is not None and account is not None:
        options.setdefault("user", account)
        options.setdefault("password", secret)
    if account is None:
        raise ValueError("connect needs an account (or a credentials file)")
    options.setdefault("inbox_prefix", trader_inbox(account))
    nc = await nats.connect(server_urls(servers), **options)
    try:
        yield Client(nc, account, timeout=timeout, response=response)
    finally:
        if nc.is_connected:
            await nc.drain()
        else:  # reconnecting, or refused for good: nothing to drain
            await nc.close()
