"""kill -9 and outages, with every part a real process: nothing acknowledged is lost,
nothing is recorded twice, and a restarted engine is exactly the engine it was."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import Cluster, OrderFlow, cluster
from tests.support.exchange import SOL, eventually, run
from tradeplane.postgres import PostgresServer
from tradeplane_gateway import connect

MARKET = type(SOL)(**{**{name: getattr(SOL, name) for name in SOL.__struct_fields__},
                      "price_band": "0", "snapshot_every": 100})


async def check_database(exchange: Cluster, commands: int, acknowledged: list[str]) -> None:
    """Every acknowledged order once, every trade once, the journal without gaps."""
    connection = await exchange.database()
    try:
        journal = [row["sequence"] for row in await connection.fetch(
            "SELECT sequence FROM journal WHERE market = $1 ORDER BY sequence",
            exchange.market)]
        assert journal == list(range(1, commands + 1))
        recorded = [row["client_order_id"] for row in await connection.fetch(
            "SELECT client_order_id FROM orders WHERE market = $1", exchange.market)]
        assert len(recorded) == len(set(recorded))
        assert set(acknowledged) <= set(recorded)
        status = await exchange.engine_status()
        trade_ids = [row["trade_id"] for row in await connection.fetch(
            "SELECT trade_id FROM trades WHERE market = $1 ORDER BY trade_id",
            exchange.market)]
        assert trade_ids == list(range(1, status["nextTradeId"]))
        assert len(trade_ids) > 0
    finally:
        await connection.close()


def test_kill_9_of_the_engine_mid_stream(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "k")
            flow.start()
            await flow.until(300)
            hash_seen = (await exchange.engine_status(with_hash=True))["stateHash"]
            exchange.kill("engine")
            await flow.until(450)  # sequenced while no engine runs
            exchange.start("engine")
            await flow.until(700)
            await flow.stop()
            commands = await exchange.settled()
            status = await exchange.engine_status(with_hash=True)
            assert status["stateHash"] == await exchange.replayed_hash()
            assert status["stateHash"] != hash_seen  # it moved on after the restart
            assert 0 < status["replayed"] < commands  # from a snapshot, not from scratch
            await check_database(exchange, commands, flow.acknowledged)

    run(scenario(), timeout=180)


def test_kill_9_of_the_recorder_mid_stream(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "r")
            flow.start()
            await flow.until(250)
            exchange.kill("recorder")
            await flow.until(500)
            exchange.start("recorder")
            await flow.until(650)
            await flow.stop()
            commands = await exchange.settled()
            await check_database(exchange, commands, flow.acknowledged)

    run(scenario(), timeout=180)


def test_postgres_stopped_under_load_then_started(tmp_path: Path, database: str,
                                                  postgres_server: PostgresServer) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "p")
            flow.start()
            await flow.until(200)
            postgres_server.stop()
            try:
                await flow.until(500)  # trading goes on without the database
                await eventually(lambda: _lagging(exchange), 10, "the recorder falling behind")
            finally:
                postgres_server.start()
            await flow.until(650)
            await flow.stop()
            commands = await exchange.settled()
            await eventually(lambda: _no_lag(exchange), 30, "the recorder's lag draining")
            await check_database(exchange, commands, flow.acknowledged)

    run(scenario(), timeout=180)


async def _lagging(exchange: Cluster) -> bool:
    return bool((await exchange.recorder_status())["lag"] > 0)


async def _no_lag(exchange: Cluster) -> bool:
    return bool((await exchange.recorder_status())["lag"] == 0)
