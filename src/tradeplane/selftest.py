"""``tradeplane selftest``: one trade through the whole exchange, as a trader would do it.

The Helm chart's ``helm test`` runs it against a throw-away Market: a resting sell and a
crossing buy, through the gateways, the command stream and the engines; it passes when
the buy is filled against the sell. It waits (up to ``--timeout``) for the market to be
served, since a new Market's engines take a moment to start. Both orders carry client
order ids, so a retried request is sequenced once.

With balances (``--ledger-shards``, docs/ledger.md) an order needs funds: first the
market's assets are defined to every shard where they are not yet (with the decimals
``tradeplane up`` would give them), and each account gets a deposit of what its order
needs and more; the transfer ids are made of the account and asset, so a retry deposits
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from decimal import Decimal
from typing import IO, Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError

from tradeplane.ledger_tools import LedgerToolError, submit
from tradeplane.up_ledger import asset_decimals, wait_for_ledger
from tradeplane_engine.access import Access, trader_inbox
from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.ledger import AnyLedgerEvent, DefineAsset, Deposit, Refused, shard_of
from tradeplane_engine.streams import market_definition
from tradeplane_engine.wire import MARKETS_BUCKET, MarketDefinition, ledger_subject
from tradeplane_gateway import connect
from tradeplane_gateway.client import Client
from tradeplane_gateway.errors import ConnectionLostError, EdgeCode, RequestError
from tradeplane_gateway.protocol import Reply

NOT_YET: frozenset[int] = frozenset({EdgeCode.UNKNOWN_MARKET, EdgeCode.NOT_SEQUENCED,
                                      EdgeCode.RESULT_TIMEOUT, EdgeCode.ENGINE_UNAVAILABLE})
"""Answers that mean "not served yet": the definition, stream or engines are coming."""
FUNDED_NOT_YET = NOT_YET | {RejectCode.NOT_FUNDED}
"""With balances, also: the ledger has the assets but not yet the market's terms."""
FUNDS = 3
"""What each account is given: this many times what its order needs (fees included)."""


async def _until_served(client: Client, market: str, side: str, price: str, deadline: float,
                        client_order_id: str, time_in_force: str, out: IO[str],
                        not_yet: frozenset[int] = NOT_YET) -> Reply:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await client.place(market, side, "1", price, time_in_force=time_in_force,
                                      client_order_id=client_order_id)
        except (RequestError, ConnectionLostError) as exc:
            if isinstance(exc, RequestError) and exc.code not in not_yet:
                raise
            if loop.time() > deadline:
                raise TimeoutError(f"market {market} not served in time: {exc}") from exc
            out.write(f"waiting for {market}: {exc}\n")
            await asyncio.sleep(2.0)


async def _definition(nc: NatsClient, market: str, deadline: float) -> MarketDefinition:
    """The market's definition, once the bucket and it are there."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            kv = await nc.jetstream().key_value(MARKETS_BUCKET)
            break
        except BucketNotFoundError:
            if loop.time() > deadline:
                raise TimeoutError("no markets bucket: is the exchange running?") from None
            await asyncio.sleep(1.0)
    try:
        return await asyncio.wait_for(market_definition(kv, market, "selftest"),
                                      max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise TimeoutError(f"market {market} not defined in time") from None


async def _assets(nc: NatsClient, shard: int) -> dict[str, int]:
    reply = await nc.request(ledger_subject(shard, "status"), b"", timeout=5)
    status: dict[str, Any] = msgspec.json.decode(reply.data)
    return dict(status.get("assets") or {})


async def fund(servers: str, access: Access, market: str, price: str, shards: int,
               accounts: tuple[str, str], deadline: float, out: IO[str]) -> None:
    """Give the maker (``accounts[0]``) base and the taker quote for one lot at
    ``price``, defining the market's assets first where a shard lacks them.

    Raises ``LedgerToolError`` when the ledger refuses, ``TimeoutError`` when the market
    or a shard's leader does not come in time."""
    loop = asyncio.get_running_loop()
    nc = await nats.connect(servers, **access.options())
    try:
        definition = await _definition(nc, market, deadline)
        await wait_for_ledger(nc, shards, max(1.0, deadline - loop.time()))
        wanted = asset_decimals([definition])
        decimals: dict[int, dict[str, int]] = {}
        for shard in range(shards):
            known = await _assets(nc, shard)
            for asset in (definition.base, definition.quote):
                if asset in known:
                    continue
                outcome = await submit(nc, shard, DefineAsset(0, 0, asset=asset,
                                                              decimals=wanted[asset]))
                _check(outcome.batch.events, f"asset {asset} in shard {shard}")
                out.write(f"defined {asset} with {wanted[asset]} decimals in shard "
                          f"{shard}\n")
            decimals[shard] = await _assets(nc, shard)
        lot = Decimal(1)  # the selftest's orders are for 1 of the base
        needs = ((accounts[0], definition.base, lot * FUNDS),
                 (accounts[1], definition.quote, lot * Decimal(price) * FUNDS))
        for account, asset, amount in needs:
            shard = shard_of(account, shards)
            units = int(amount.scaleb(decimals[shard][asset]))
            outcome = await submit(nc, shard, Deposit(
                0, 0, transfer_id=f"{account}-{asset}", account=account, asset=asset,
                amount=units))
            _check(outcome.batch.events, f"deposit for {account}")
            out.write(f"deposited {amount} {asset} for {account}\n")
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def _check(events: Sequence[AnyLedgerEvent], what: str) -> None:
    for event in events:
        if isinstance(event, Refused):
            raise LedgerToolError(f"{what} refused: {int(event.code)} {event.code.name}: "
                                  f"{event.reason}")


async def selftest(servers: str, market: str, price: str, timeout: float, out: IO[str],
                   access: Access | None = None, ledger_shards: int = 0) -> int:
    """0 when a crossing buy fills against a resting sell; 1 (and why) when not.

    It trades as two throwaway accounts, so it runs with the admin's credentials (which
    may act as any account; docs/security.md). With ``ledger_shards``, it funds them
    first through the ledger."""
    run = secrets.token_hex(4)
    access = access or Access()
    deadline = asyncio.get_running_loop().time() + timeout
    not_yet = FUNDED_NOT_YET if ledger_shards else NOT_YET
    try:
        if ledger_shards:
            await fund(servers, access, market, price, ledger_shards,
                       (f"selftest-maker-{run}", f"selftest-taker-{run}"), deadline, out)
        async with connect(servers, account=f"selftest-maker-{run}",
                           **access.options(trader_inbox(f"selftest-maker-{run}"))) as maker, \
                connect(servers, account=f"selftest-taker-{run}",
                        **access.options(trader_inbox(f"selftest-taker-{run}"))) as taker:
            sell = await _until_served(maker, market, "sell", price, deadline,
                                       f"sell-{run}", "GTC", out, not_yet)
            assert sell.order is not None
            out.write(f"sell {sell.order.order_id}: {sell.order.status} at sequence "
                      f"{sell.sequence}\n")
            buy = await _until_served(taker, market, "buy", price, deadline, f"buy-{run}",
                                      "IOC", out, not_yet)
            assert buy.order is not None
            out.write(f"buy {buy.order.order_id}: {buy.order.status}, filled "
                      f"{buy.order.filled_quantity} at sequence {buy.sequence}\n")
            if buy.order.status != "filled":
                out.write(f"FAILED: the crossing buy was not filled ({buy.order.status}"
                          f"{': ' + buy.order.reason if buy.order.reason else ''})\n")
                await maker.cancel_all(market)
                return 1
    except (RequestError, ConnectionLostError, TimeoutError, OSError, LedgerToolError,
            nats.errors.Error) as exc:
        out.write(f"FAILED: {exc}\n")
        return 1
    out.write(f"ok: one trade on {market}\n")
    return 0
