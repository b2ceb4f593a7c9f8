"""The data plane keeps going when parts of it fail or multiply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from tests.support.exchange import SOL, eventually, local_exchange, run
from tradeplane.processes import NatsServer
from tradeplane.up import publish_markets
from tradeplane_engine.service import run_engines
from tradeplane_engine.streams import StreamSettings
from tradeplane_gateway import Client, ConnectionLostError, RequestError, connect
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.serve import run_gateway
from tradeplane_gateway.service import Gateway


def test_gateways_share_the_load_and_each_request_is_answered_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice", response="ack") as alice:
            second = Gateway(exchange.nc, exchange.markets)
            await second.start()
            first_before = exchange.gateway.requests_served
            try:
                replies = await asyncio.gather(*(
                    alice.place("sol-usdt", "buy", "0.1", "99", client_order_id=f"o{n}")
                    for n in range(200)))
            finally:
                await second.stop()
            served = {"first": exchange.gateway.requests_served - first_before,
                      "second": second.requests_served}
            assert sorted(reply.sequence or 0 for reply in replies) == list(range(1, 201))
            assert served["first"] + served["second"] == 200
            assert served["first"] > 0
            assert served["second"] > 0

    run(scenario())


def test_the_engine_rebuilds_a_consumer_the_server_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            await alice.place("sol-usdt", "buy", "1", "99")
            js = exchange.nc.jetstream()
            consumers = await js.consumers_info("tp-cmd-sol-usdt")
            assert len(consumers) == 1
            await js.delete_consumer("tp-cmd-sol-usdt", consumers[0].name)
            acked = await alice.place("sol-usdt", "buy", "1", "98", response="ack")
            service = exchange.services["sol-usdt"]
            await eventually(lambda: service.engine.last_sequence == acked.sequence,
                             timeout=15, what="the engine applying the order")
            placed = await alice.place("sol-usdt", "buy", "1", "97")
            assert placed.order is not None
            assert placed.order.status == "new"

    run(scenario())


def test_a_new_gateway_serves_markets_defined_before_it_started(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange:
            kv = await exchange.nc.jetstream().key_value("tp-markets")
            directory = MarketDirectory()
            follower = asyncio.create_task(directory.follow(kv))
            try:
                known = await directory.wait_for("sol-usdt")
                assert known.spec.tick_size == "0.01"
                await kv.delete("sol-usdt")
                await eventually(lambda: directory.get("sol-usdt") is None)
            finally:
                follower.cancel()

    run(scenario())


def test_trading_resumes_after_nats_server_restarts_and_nothing_is_lost(tmp_path: Path) -> None:
    """Streams on disk, as ``tradeplane up`` keeps them: the services reconnect by
    themselves, the engine rebuilds its consumer, and every order is there after."""

    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        port = int(server.url.rsplit(":", 1)[1])
        services: list[asyncio.Task[None]] = []
        try:
            await publish_markets(server.url, [SOL], StreamSettings(), server.access("admin"))
            services = [asyncio.create_task(run_engines(server.url, ["sol-usdt"],
                                                        access=server.access("engine"))),
                        asyncio.create_task(run_gateway(server.url,
                                                        access=server.access("gateway")))]
            async with connect(server.url_as("admin"), account="alice", reconnect_time_wait=0.2,
                               max_reconnect_attempts=-1) as alice:
                await eventually(lambda: _places(alice, "99"), timeout=20,
                                 what="the first order")
                server.stop()
                server = NatsServer.secured(tmp_path / "nats", port=port).start()
                await eventually(lambda: _places(alice, "98"), timeout=30,
                                 what="an order after the restart")
                async with alice.book("sol-usdt") as book:
                    assert [price for price, _ in book.bids] == ["99", "98"]
                # Every command's events are in the events stream: its last message is
                # the last command's (a message holds the events of a batch of commands).
                js = alice.nc.jetstream()
                commands = (await js.stream_info("tp-cmd-sol-usdt")).state.last_seq
                events = (await js.stream_info("tp-evt-sol-usdt")).state.last_seq
                last = await js.get_msg("tp-evt-sol-usdt", events)
                assert last.headers is not None
                assert last.headers["Tp-Sequence"] == str(commands)
        finally:
            for task in services:
                task.cancel()
            await asyncio.gather(*services, return_exceptions=True)
            server.stop()

    run(scenario(), timeout=90)


async def _places(client: Client, price: str) -> bool:
    """True once an order at ``price`` is placed (a retry with the same id is safe)."""
    try:
        reply = await client.place("sol-usdt", "buy", "1", price, client_order_id=f"at-{price}")
    except (RequestError, ConnectionLostError):
        return False
    return reply.order is not None


def test_a_retried_place_waits_for_a_recovering_engine_and_answers_the_original(
        tmp_path: Path) -> None:
    """As just after a NATS restart: the retry is a duplicate, and the engine answers
    "recovering" for a while. The reply is the original's state, not a refusal."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            first = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="again")
            assert first.order is not None
            service = exchange.services["sol-usdt"]
            service.ready.clear()  # replaying: every query is answered "recovering"
            queries: list[bytes] = []

            async def watch(msg: Msg) -> None:
                queries.append(msg.data)

            watching = await alice.nc.subscribe("tp.engine.sol-usdt.order", cb=watch)
            await alice.nc.flush()
            retry = asyncio.create_task(
                alice.place("sol-usdt", "buy", "1", "99", client_order_id="again"))
            # A second query means the first was answered "recovering" and not given up on.
            await eventually(lambda: retry.done() or len(queries) >= 2,
                             what="the gateway asking the engine again")
            await watching.unsubscribe()
            service.ready.set()
            again = await retry
            assert again.duplicate
            assert again.sequence == first.sequence
            assert again.order is not None
            assert (again.order.order_id, again.order.status) == (first.order.order_id, "new")

    run(scenario())


def test_a_retried_place_the_engine_cannot_answer_for_says_it_is_sequenced(
        tmp_path: Path) -> None:
    """No engine within the result timeout: 910 with the original's sequence (the order
    is sequenced; ask its status by clientOrderId), never 911, which reads as "not
    placed". Once the engine is back, status has the outcome."""
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice:
            first = await alice.place("sol-usdt", "buy", "1", "99", client_order_id="lost")
            assert first.order is not None
            await exchange.stop_engine("sol-usdt")
            exchange.gateway.result_timeout = 1.0
            with pytest.raises(RequestError) as unanswered:
                await alice.place("sol-usdt", "buy", "1", "99", client_order_id="lost")
            assert (unanswered.value.code, unanswered.value.name) == (910, "RESULT_TIMEOUT")
            assert unanswered.value.sequence == first.sequence
            assert unanswered.value.client_order_id == "lost"
            with pytest.raises(RequestError) as unnamed:  # a new order, no clientOrderId
                await alice.place("sol-usdt", "buy", "1", "98")
            assert unnamed.value.code == 910
            assert unnamed.value.sequence == (first.sequence or 0) + 1
            assert unnamed.value.client_order_id  # the one the gateway gave it

            await exchange.start_engine(SOL)
            status = await alice.status("sol-usdt",
                                        client_order_id=unanswered.value.client_order_id)
            assert status.order is not None
            assert status.order.order_id == first.order.order_id
            status = await alice.status("sol-usdt",
                                        client_order_id=unnamed.value.client_order_id)
            assert status.order is not None
            assert (status.order.status, status.order.price) == ("new", "98")

    run(scenario())
