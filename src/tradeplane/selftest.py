"""``tradeplane selftest``: one trade through the whole exchange, as a trader would do it.

The Helm chart's ``helm test`` runs it against a throw-away Market: a resting sell and a
crossing buy, through the gateways, the command stream and the engines; it passes when
the buy is filled against the sell. It waits (up to ``--timeout``) for the market to be
served, since a new Market's engines take a moment to start. Both orders carry client
order ids, so a retried request is sequenced once.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import IO

from tradeplane_engine.access import Access, trader_inbox
from tradeplane_gateway import connect
from tradeplane_gateway.client import Client
from tradeplane_gateway.errors import ConnectionLostError, EdgeCode, RequestError
from tradeplane_gateway.protocol import Reply

NOT_YET = {EdgeCode.UNKNOWN_MARKET, EdgeCode.NOT_SEQUENCED, EdgeCode.RESULT_TIMEOUT,
           EdgeCode.ENGINE_UNAVAILABLE}
"""Answers that mean "not served yet": the definition, stream or engines are coming."""


async def _until_served(client: Client, market: str, side: str, price: str, deadline: float,
                        client_order_id: str, time_in_force: str, out: IO[str]) -> Reply:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await client.place(market, side, "1", price, time_in_force=time_in_force,
                                      client_order_id=client_order_id)
        except (RequestError, ConnectionLostError) as exc:
            if isinstance(exc, RequestError) and exc.code not in NOT_YET:
                raise
            if loop.time() > deadline:
                raise TimeoutError(f"market {market} not served in time: {exc}") from exc
            out.write(f"waiting for {market}: {exc}\n")
            await asyncio.sleep(2.0)


async def selftest(servers: str, market: str, price: str, timeout: float, out: IO[str],
                   access: Access | None = None) -> int:
    """0 when a crossing buy fills against a resting sell; 1 (and why) when not.

    It trades as two throwaway accounts, so it runs with the admin's credentials (which
    may act as any account; docs/security.md)."""
    run = secrets.token_hex(4)
    access = access or Access()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with connect(servers, account=f"selftest-maker-{run}",
                           **access.options(trader_inbox(f"selftest-maker-{run}"))) as maker, \
                connect(servers, account=f"selftest-taker-{run}",
                        **access.options(trader_inbox(f"selftest-taker-{run}"))) as taker:
            sell = await _until_served(maker, market, "sell", price, deadline,
                                       f"sell-{run}", "GTC", out)
            assert sell.order is not None
            out.write(f"sell {sell.order.order_id}: {sell.order.status} at sequence "
                      f"{sell.sequence}\n")
            buy = await _until_served(taker, market, "buy", price, deadline, f"buy-{run}",
                                      "IOC", out)
            assert buy.order is not None
            out.write(f"buy {buy.order.order_id}: {buy.order.status}, filled "
                      f"{buy.order.filled_quantity} at sequence {buy.sequence}\n")
            if buy.order.status != "filled":
                out.write(f"FAILED: the crossing buy was not filled ({buy.order.status}"
                          f"{': ' + buy.order.reason if buy.order.reason else ''})\n")
                await maker.cancel_all(market)
                return 1
    except (RequestError, ConnectionLostError, TimeoutError, OSError) as exc:
        out.write(f"FAILED: {exc}\n")
        return 1
    out.write(f"ok: one trade on {market}\n")
    return 0
