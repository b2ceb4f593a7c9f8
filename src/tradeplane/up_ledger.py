"""Balances for ``tradeplane up`` (docs/ledger.md): the assets of the manifests' markets
defined to every ledger shard, and, with ``--demo``, the demo traders funded.

Each asset gets ``DEFAULT_DECIMALS`` decimals, or more where one of its markets' grids
needs them (a lot of 0.000001 BTC needs 6 of BTC; a tick × lot needs the sum of both in
the quote). An asset's decimals never change once defined, so a market added later with
a finer grid than its assets allow is not funded: define its assets with enough
decimals first (``tradeplane asset define``).
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import msgspec
import nats
from nats.aio.client import Client

from tradeplane.ledger_tools import submit
from tradeplane_engine.access import Access
from tradeplane_engine.ledger import DefineAsset, Deposit, Refused, shard_of
from tradeplane_engine.wire import MarketDefinition, ledger_subject

DEFAULT_DECIMALS = 8
DEMO_VALUE = Decimal(10_000_000)
"""What each demo trader is given of each asset, in quote units of value: plenty to
quote and take for a long demo."""


def _places(step: str) -> int:
    exponent = Decimal(step).normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def asset_decimals(definitions: list[MarketDefinition]) -> dict[str, int]:
    """Each asset's decimals: the default, or what its markets' grids need."""
    decimals: dict[str, int] = {}
    for market in definitions:
        base = _places(market.lot_size)
        quote = _places(market.tick_size) + base
        for asset, needed in ((market.base, base), (market.quote, quote)):
            decimals[asset] = max(decimals.get(asset, DEFAULT_DECIMALS), needed)
    return decimals


async def wait_for_ledger(nc: Client, shards: int, timeout: float = 60.0) -> None:
    """Until every shard has a leader that answers."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = set(range(shards))
    while pending:
        for shard in sorted(pending):
            with contextlib.suppress(nats.errors.Error):
                status = msgspec.json.decode((await nc.request(
                    ledger_subject(shard, "status"), b"", timeout=0.5)).data)
                if status.get("leading"):
                    pending.discard(shard)
        if pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"ledger shards {sorted(pending)} have no leader after "
                                   f"{timeout} s")
            await asyncio.sleep(0.1)


async def set_up_balances(url: str, access: Access, definitions: list[MarketDefinition],
                          shards: int, demo_accounts: list[str]) -> list[str]:
    """Define the assets in every shard and fund the demo traders; what was refused."""
    refused: list[str] = []
    decimals = asset_decimals(definitions)
    nc = await nats.connect(url, **access.options())
    try:
        await wait_for_ledger(nc, shards)
        for shard in range(shards):
            for asset, places in sorted(decimals.items()):
                outcome = await submit(nc, shard, DefineAsset(0, 0, asset=asset,
                                                              decimals=places))
                refused += [f"asset {asset} in shard {shard}: {event.reason}"
                            for event in outcome.batch.events if isinstance(event, Refused)]
        prices = {market.base: Decimal(market.reference_price or "100")
                  for market in definitions}
        for account in demo_accounts:
            for asset, places in sorted(decimals.items()):
                amount = int((DEMO_VALUE / prices.get(asset, Decimal(1))).scaleb(places))
                outcome = await submit(nc, shard_of(account, shards), Deposit(
                    0, 0, transfer_id=f"demo-{account}-{asset}", account=account,
                    asset=asset, amount=amount))
                refused += [f"deposit for {account}: {event.reason}"
                            for event in outcome.batch.events if isinstance(event, Refused)]
    finally:
        await nc.close()
    return refused
