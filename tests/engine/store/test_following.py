"""A recorder without a market list follows the markets bucket, against real nats-server
and PostgreSQL: markets defined after it started are recorded, a deleted market stops,
and a market whose tasks fail starts again alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import asyncpg
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from tests.support.exchange import BTC, SETTINGS, SOL, Exchange, eventually, local_exchange, run
from tradeplane.cli import _parser
from tradeplane_engine.core import TradingMode
from tradeplane_engine.store.database import open_database
from tradeplane_engine.store.following import RecordedMarkets, needs_restart, record_market
from tradeplane_engine.streams import markets_bucket
from tradeplane_engine.wire import (
    MarketDefinition,
    encode_definition,
    history_subject,
    recorder_subject,
)
from tradeplane_gateway import connect


async def orders_in(pool: asyncpg.Pool, market: str) -> int:
    async with pool.acquire() as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM orders WHERE market = $1", market)
    return count


async def answers(nc: Client, subject: str) -> bool:
    """Whether anything answers a request on the subject."""
    try:
        await nc.request(subject, b'{"account": "alice"}', timeout=2)
    except nats.errors.NoRespondersError:
        return False
    return True


@contextlib.asynccontextmanager
async def following(exchange: Exchange, markets: RecordedMarkets) -> AsyncIterator[None]:
    """``markets`` following the exchange's bucket for the length of the block."""
    kv = await markets_bucket(exchange.nc.jetstream(), SETTINGS)
    task = asyncio.create_task(markets.follow(kv))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert markets.definitions == {}, "stopping the follower stops every market"


def test_markets_are_recorded_as_they_are_defined_and_stop_when_deleted(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        async with local_exchange(tmp_path) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice:
            markets = RecordedMarkets(exchange.nc, pool)
            async with following(exchange, markets):
                for definition in (SOL, BTC):  # both defined after the recorder started
                    await exchange.define(definition)
                    await exchange.start_engine(definition)
                await alice.place("sol-usdt", "sell", "1", "100")
                await alice.place("btc-usdt", "sell", "1", "100")
                for market in ("sol-usdt", "btc-usdt"):
                    await eventually(partial(_count_is, pool, market, 1),
                                     timeout=15, what=f"an order of {market} recorded")
                assert await answers(exchange.nc, history_subject("sol-usdt", "trades"))

                kv = await markets_bucket(exchange.nc.jetstream(), SETTINGS)
                await kv.delete("sol-usdt")
                await eventually(lambda: "sol-usdt" not in markets.definitions,
                                 what="sol-usdt no longer recorded")
                assert not await answers(exchange.nc, history_subject("sol-usdt", "trades"))
                assert not await answers(exchange.nc, recorder_subject("sol-usdt", "status"))

                await alice.place("btc-usdt", "sell", "1", "101")
                await eventually(lambda: _count_is(pool, "btc-usdt", 2), timeout=15,
                                 what="btc-usdt still recorded")
                assert list(markets.definitions) == ["btc-usdt"]
        await pool.close()

    run(scenario())


def test_a_market_restarts_alone_after_a_failure_or_a_change_it_uses(
        tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database)
        starts: Counter[str] = Counter()

        async def failing_once(nc: Client, pool: asyncpg.Pool,
                               definition: MarketDefinition) -> None:
            starts[definition.name] += 1
            if definition.name == "sol-usdt" and starts["sol-usdt"] == 1:
                raise RuntimeError("the first start of sol-usdt fails")
            await record_market(nc, pool, definition)

        async with local_exchange(tmp_path, SOL, BTC) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice:
            markets = RecordedMarkets(exchange.nc, pool, restart_delay=0.05,
                                      tasks=failing_once)
            async with following(exchange, markets):
                await alice.place("sol-usdt", "sell", "1", "100")
                await eventually(lambda: _count_is(pool, "sol-usdt", 1), timeout=15,
                                 what="sol-usdt recorded after its restart")
                assert starts == {"sol-usdt": 2, "btc-usdt": 1}

                # What no task uses restarts nothing; what the snapshotter uses does.
                unused = msgspec.structs.replace(SOL, replicas=3, fees={"maker": "0.001"})
                await exchange.define(unused)
                await eventually(lambda: markets.definitions["sol-usdt"] == unused,
                                 what="the rewritten definition taken")
                assert starts["sol-usdt"] == 2
                used = msgspec.structs.replace(SOL, snapshot_every=1_000)
                await exchange.define(used)
                await eventually(lambda: starts["sol-usdt"] == 3, what="sol-usdt restarted")
                await alice.place("sol-usdt", "sell", "1", "101")
                await eventually(lambda: _count_is(pool, "sol-usdt", 2), timeout=15,
                                 what="sol-usdt recorded after the change")
                assert starts["btc-usdt"] == 1
        await pool.close()

    run(scenario())


def test_a_new_watch_stops_markets_gone_from_the_bucket_and_bad_keys_start_nothing(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async def idle(nc: Client, pool: asyncpg.Pool, definition: MarketDefinition) -> None:
            await asyncio.Event().wait()

        async with local_exchange(tmp_path, SOL, engines=False) as exchange:
            markets = RecordedMarkets(exchange.nc, None, tasks=idle)
            # Running from before, but no longer in the bucket when the watch starts.
            await markets.apply("btc-usdt", encode_definition(BTC), None)
            kv = await markets_bucket(exchange.nc.jetstream(), SETTINGS)
            await kv.put("garbage", b"{not json")
            await kv.put("eth-usdt", encode_definition(BTC))  # names another market
            async with following(exchange, markets):
                await eventually(lambda: list(markets.definitions) == ["sol-usdt"],
                                 what="only sol-usdt recorded")
                await kv.purge("sol-usdt")
                await eventually(lambda: not markets.definitions, what="sol-usdt stopped")

    run(scenario())


def test_only_fields_the_tasks_use_restart_them() -> None:
    assert not needs_restart(SOL, msgspec.structs.replace(
        SOL, replicas=5, fees={"maker": "0.001"}, trading_mode=TradingMode.CANCEL_ONLY))
    assert needs_restart(SOL, msgspec.structs.replace(SOL, tick_size="0.1"))
    assert needs_restart(SOL, msgspec.structs.replace(SOL, snapshot_every=10))


@pytest.mark.parametrize(("argv", "markets"), [
    (["recorder"], None),
    (["recorder", "--market", "sol-usdt", "--market", "btc-usdt"], ["sol-usdt", "btc-usdt"]),
])
def test_the_market_list_is_optional(argv: list[str], markets: list[str] | None) -> None:
    assert _parser().parse_args(argv).markets == markets


async def _count_is(pool: asyncpg.Pool, market: str, count: int) -> bool:
    return await orders_in(pool, market) == count
