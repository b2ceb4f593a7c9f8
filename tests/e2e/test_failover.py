"""Failover with every part a process: kill -9 of the leader again and again, a frozen
leader that wakes up fenced, and a planned switchover — nothing lost, nothing twice."""

from __future__ import annotations

import signal
from pathlib import Path

import msgspec
import nats.errors

from tests.e2e.cluster import Cluster, OrderFlow, cluster
from tests.e2e.test_crash_recovery import MARKET, check_database
from tests.support.exchange import eventually, run
from tradeplane_engine.wire import decode_event_message
from tradeplane_gateway import LocalBook, connect

ROLES = ("engine-1", "engine-2", "recorder", "gateway")


async def check_replicas(exchange: Cluster, replicas: list[str]) -> None:
    """Every replica holds the state of the whole command stream, by its hash."""
    expected = await exchange.replayed_hash()
    for replica in replicas:
        last: list[object] = ["no answer yet"]

        async def caught_up(replica: str = replica, last: list[object] = last) -> bool:
            # A replica started a moment ago may not answer yet (no responders).
            try:
                status = await exchange.replica_status(replica, with_hash=True)
            except nats.errors.Error as exc:
                last[0] = repr(exc)
                return False
            last[0] = status
            return bool(status["stateHash"] == expected)

        try:
            await eventually(caught_up, 30, f"replica {replica} holding the stream's state")
        except AssertionError as exc:
            # Say where it was: a stalled standby and one still replaying fail alike,
            # and a replica whose process ended does not answer at all.
            raise AssertionError(f"{exc}; its last status: {last[0]}; "
                                 f"{exchange.described(replica)}") from exc


async def check_events_stream(exchange: Cluster, commands: int) -> None:
    """Every command's events once, in command order, each message's Tp-Sequence its
    last command's."""
    js = exchange.nc.jetstream()
    stream = f"tp-evt-{exchange.market}"
    info = await js.stream_info(stream)
    sequences: list[int] = []
    for position in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await js.get_msg(stream, position)
        assert stored.headers is not None
        batches = decode_event_message(stored.data or b"")
        assert int(stored.headers["Tp-Sequence"]) == batches[-1].sequence
        sequences.extend(batch.sequence for batch in batches)
    assert sequences == list(range(1, commands + 1))


async def check_settled(exchange: Cluster, acknowledged: list[str],
                        replicas: list[str]) -> None:
    """Once everything is applied and recorded: one events message per command, every
    acknowledged order once in PostgreSQL, every replica with the stream's state."""
    commands = await exchange.settled(timeout=90)
    await check_events_stream(exchange, commands)
    await check_database(exchange, commands, acknowledged)
    await check_replicas(exchange, replicas)


async def check_book(exchange: Cluster, book: LocalBook) -> None:
    answer = await book.nc.request(f"tp.md.{exchange.market}.book.snapshot", b"",
                                   timeout=10)  # on the SDK's (trader's) inbox
    snapshot = msgspec.json.decode(answer.data)
    await book.wait_for_sequence(snapshot["sequence"] if not snapshot["bids"]
                                 and not snapshot["asks"] else 0)
    await eventually(lambda: book.bids == [tuple(level) for level in snapshot["bids"]]
                     and book.asks == [tuple(level) for level in snapshot["asks"]], 20,
                     "the SDK's book equal to the leader's")


def test_kill_9_of_the_leader_five_times_under_order_flow(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller, \
                LocalBook(buyer.nc, exchange.market, timeout=20) as book:
            flow = OrderFlow(buyer, seller, exchange.market, "f")
            flow.start()
            await flow.until(100)
            replicas = ["engine-1", "engine-2"]
            for kill in range(5):
                leader = await exchange.leader()
                exchange.kill(leader)
                replicas.remove(leader)
                successor = await exchange.leader(not_=leader)
                assert successor in replicas
                replacement = f"engine-{3 + kill}"
                exchange.start(replacement)
                replicas.append(replacement)
                await flow.until(len(flow.acknowledged) + 100)
            await flow.stop()
            await check_settled(exchange, flow.acknowledged, replicas)
            await check_book(exchange, book)

    run(scenario(), timeout=300)


def test_a_frozen_leader_wakes_up_fenced_and_rejoins_as_a_standby(tmp_path: Path,
                                                                  database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "s")
            flow.start()
            await flow.until(100)
            frozen = await exchange.leader()
            exchange.signal(frozen, signal.SIGSTOP)
            try:
                successor = await exchange.leader(not_=frozen)
                await flow.until(len(flow.acknowledged) + 200)
            finally:
                exchange.signal(frozen, signal.SIGCONT)

            async def standing_by() -> bool:
                status = await exchange.replica_status(frozen)
                return bool(status["role"] == "standby")

            await eventually(standing_by, 20, "the woken leader standing by")
            await flow.until(len(flow.acknowledged) + 100)
            await flow.stop()
            assert (await exchange.engine_status())["replica"] == successor
            await check_settled(exchange, flow.acknowledged, ["engine-1", "engine-2"])

    run(scenario(), timeout=300)


def test_planned_switchover_under_load(tmp_path: Path, database: str) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, database, MARKET, roles=ROLES) as exchange, \
                connect(exchange.url, account="buyer") as buyer, \
                connect(exchange.url, account="seller") as seller:
            flow = OrderFlow(buyer, seller, exchange.market, "w")
            flow.start()
            await flow.until(100)
            leader = await exchange.leader()
            standby = "engine-2" if leader == "engine-1" else "engine-1"
            for bad in ("x y", ">", "*", ""):  # a target names a subject: refused, no harm
                refused = await exchange.nc.request(
                    f"tp.engine.{exchange.market}.switchover",
                    msgspec.json.encode({"to": bad}), timeout=10)
                assert "is not a replica name" in msgspec.json.decode(refused.data)["error"]
            assert await exchange.leader() == leader
            await flow.until(len(flow.acknowledged) + 20)
            answer = await exchange.nc.request(f"tp.engine.{exchange.market}.switchover",
                                               msgspec.json.encode({"to": standby}), timeout=10)
            assert msgspec.json.decode(answer.data)["to"] == standby
            assert await exchange.leader(not_=leader) == standby
            await flow.until(len(flow.acknowledged) + 150)
            await flow.stop()
            await check_settled(exchange, flow.acknowledged, ["engine-1", "engine-2"])

    run(scenario(), timeout=300)
