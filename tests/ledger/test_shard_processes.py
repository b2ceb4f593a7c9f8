"""A process per ledger shard (``tradeplane ledger --shards N --shard K``, as the chart
runs the ledger with ``ledger.processPerShard``), on a real authenticated nats-server:
each process leads its own shard and no other, and an account's deposit lands in its
shard's process, whatever shard the account hashes to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats

from tradeplane.ledger_tools import submit
from tradeplane.processes import NatsServer, spawn, stop, tradeplane_command
from tradeplane.up import publish_markets
from tradeplane.up_ledger import wait_for_ledger
from tradeplane_engine.access import Access
from tradeplane_engine.ledger import DefineAsset, Deposit, Movement, shard_of
from tradeplane_engine.streams import StreamSettings
from tradeplane_engine.wire import MarketDefinition, ledger_subject

SHARDS = 2
MARKET = MarketDefinition(name="sol-usdt", base="SOL", quote="USDT", tick_size="0.01",
                          lot_size="0.01", reference_price="100")


def account_of(shard: int) -> str:
    """An account name the ledger places in ``shard``."""
    return next(name for number in range(1000)
                if shard_of(name := f"trader{number}", SHARDS) == shard)


async def check(url: str, admin: Access) -> None:
    nc = await nats.connect(url, **admin.options())
    try:
        await wait_for_ledger(nc, SHARDS)
        for shard in range(SHARDS):
            # Every answer for a shard comes from its own process's replica.
            for _ in range(5):
                status = msgspec.json.decode((await nc.request(
                    ledger_subject(shard, "status"), b"", timeout=2)).data)
                assert (status["shard"], status["shards"], status["replica"],
                        status["leading"]) == (shard, SHARDS, f"ledger-{shard}", True)
            outcome = await submit(nc, shard, DefineAsset(0, 0, asset="USDT", decimals=6))
            assert outcome.batch.events == []  # defined: nothing moves, nothing refused
            account = account_of(shard)
            outcome = await submit(nc, shard, Deposit(
                0, 0, transfer_id=f"t-{shard}", account=account, asset="USDT", amount=5))
            assert {(event.account, event.available) for event in outcome.batch.events
                    if isinstance(event, Movement)} == {(account, 5), ("$world", -5)}
            balances = msgspec.json.decode((await nc.request(
                ledger_subject(shard, "balances"),
                msgspec.json.encode({"account": account}), timeout=2)).data)
            assert balances["balances"]["USDT"]["available"] == "0.000005", balances
    finally:
        await nc.close()


def test_a_process_per_shard(tmp_path: Path) -> None:
    with NatsServer.secured(tmp_path / "nats").start() as server:
        assert server.secrets is not None
        admin = server.access("admin")
        asyncio.run(publish_markets(server.url, [MARKET], StreamSettings(), admin))
        processes = [spawn(tradeplane_command(
            "--nats", server.url, "--credentials", str(server.secrets.credentials("ledger")),
            "ledger", "--shards", str(SHARDS), "--shard", str(shard),
            "--replica", f"ledger-{shard}")) for shard in range(SHARDS)]
        try:
            asyncio.run(check(server.url, admin))
        finally:
            for process in processes:
                stop(process)
