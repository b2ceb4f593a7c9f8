"""A market's trading mode changed while it runs: sequenced in the command stream, with the
mode the stream began in kept in the stream's metadata, so a replay from the first
command reproduces what was published whatever the definition says now."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import nats
import pytest

from tests.support.exchange import SETTINGS, SOL, eventually, local_exchange, run
from tradeplane.processes import NatsServer
from tradeplane.up import publish_markets, sequence_mode_change
from tradeplane_engine.core import CancelAll, Engine, SetTradingMode, TradingMode
from tradeplane_engine.service import publish_admin
from tradeplane_engine.streams import (
    INITIAL_MODE_KEY,
    StreamSettings,
    ensure_market_streams,
    initial_trading_mode,
    markets_bucket,
    replay_spec,
)
from tradeplane_engine.wire import MarketDefinition, decode_command, decode_definition
from tradeplane_gateway import RequestError, connect

HALTED = msgspec.structs.replace(SOL, trading_mode=TradingMode.HALTED)


def in_mode(definition: MarketDefinition, mode: TradingMode) -> MarketDefinition:
    return msgspec.structs.replace(definition, trading_mode=mode)


def test_a_replay_from_scratch_starts_in_the_mode_the_stream_began_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            for n in range(6):
                await alice.place("sol-usdt", "sell", "1", str(100 + n % 2))
                await bob.place("sol-usdt", "buy", "0.5", "101")
            js = exchange.nc.jetstream()
            # What an operator does: sequence the change, then rewrite the definition.
            halt = await publish_admin(js, "sol-usdt",
                                       SetTradingMode(0, 0, mode=TradingMode.HALTED),
                                       "sol-usdt:halt")
            assert halt == 13
            await exchange.define(HALTED)
            running = exchange.services["sol-usdt"]
            await eventually(lambda: running.engine.last_sequence == halt)
            assert running.engine.mode is TradingMode.HALTED
            assert running.engine.next_trade_id > 1  # orders did match before the halt
            with pytest.raises(RequestError) as refused:
                await alice.place("sol-usdt", "sell", "1", "100")
            assert refused.value.code == 101
            hash_before = running.engine.state_hash()

            # A brand-new engine with the new definition, no database: a replay from scratch.
            await exchange.stop_engine("sol-usdt")
            fresh = await exchange.start_engine(HALTED)
            assert fresh is not running
            assert fresh.replayed == 14
            assert fresh.engine.state_hash() == hash_before
            assert fresh.engine.mode is TradingMode.HALTED
            # The stream still says how it began, though its definition was written again.
            assert await initial_trading_mode(js, "sol-usdt") is TradingMode.OPEN

            # Starting from the definition's current mode would have refused every order.
            naive = Engine(HALTED.spec())
            for sequence in range(1, 15):
                message = await js.get_msg("tp-cmd-sol-usdt", sequence)
                assert message.data is not None
                naive.apply(decode_command(message.data, sequence, 0))
            assert naive.state_hash() != hash_before

    run(scenario())


def test_updating_a_command_stream_keeps_its_initial_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            nc = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = nc.jetstream()
                await ensure_market_streams(js, SOL, SETTINGS)
                info = await js.stream_info("tp-cmd-sol-usdt")
                assert info.config.metadata is not None
                assert info.config.metadata[INITIAL_MODE_KEY] == "open"
                await publish_admin(js, "sol-usdt",
                                    SetTradingMode(0, 0, mode=TradingMode.CANCEL_ONLY), "m1")

                # Another configuration and another mode in the definition: the limits
                # change, the initial mode stays.
                longer = StreamSettings(memory=True, command_retention=500_000)
                await ensure_market_streams(js, in_mode(SOL, TradingMode.CANCEL_ONLY), longer)
                info = await js.stream_info("tp-cmd-sol-usdt")
                assert info.config.max_msgs == 500_000
                assert info.config.metadata is not None
                assert info.config.metadata[INITIAL_MODE_KEY] == "open"
                replay = await replay_spec(js, in_mode(SOL, TradingMode.CANCEL_ONLY))
                assert replay == SOL.spec()
                # The events stream records no mode.
                events = await js.stream_info("tp-evt-sol-usdt")
                assert INITIAL_MODE_KEY not in (events.config.metadata or {})
            finally:
                await nc.close()

    run(scenario())


def test_a_stream_without_an_initial_mode(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            nc = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = nc.jetstream()
                # Streams as they were made before the mode was recorded.
                btc = MarketDefinition(name="btc-usdt", base="BTC", quote="USDT",
                                       tick_size="0.1", lot_size="0.0001")
                for market in ("sol-usdt", "btc-usdt"):
                    await js.add_stream(SETTINGS.command_stream_config(market))
                await publish_admin(js, "sol-usdt",
                                    SetTradingMode(0, 0, mode=TradingMode.POST_ONLY), "m1")

                # With commands in it, no mode can be known for sure: none is recorded,
                # and a replay falls back to the definition's mode, with a warning.
                await ensure_market_streams(js, HALTED, SETTINGS)
                assert await initial_trading_mode(js, "sol-usdt") is None
                with caplog.at_level(logging.WARNING):
                    assert await replay_spec(js, HALTED) == HALTED.spec()
                assert "records no initial trading mode" in caplog.text

                # Without a command yet, the definition's mode is the one its first meets.
                await ensure_market_streams(js, in_mode(btc, TradingMode.POST_ONLY), SETTINGS)
                assert await initial_trading_mode(js, "btc-usdt") is TradingMode.POST_ONLY
            finally:
                await nc.close()

    run(scenario())


def test_up_sequences_a_mode_change_of_an_existing_market(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            await publish_markets(server.url, [SOL], SETTINGS, server.access("admin"))
            # unchanged: nothing to do
            await publish_markets(server.url, [SOL], SETTINGS, server.access("admin"))
            nc = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = nc.jetstream()
                kv = await markets_bucket(js, SETTINGS)
                assert (await js.stream_info("tp-cmd-sol-usdt")).state.messages == 0

                # A retry before the bucket is written is stored once.
                first = await sequence_mode_change(js, kv, HALTED)
                again = await sequence_mode_change(js, kv, HALTED)
                assert first == again == 1
                await publish_markets(server.url, [HALTED], SETTINGS, server.access("admin"))
                info = await js.stream_info("tp-cmd-sol-usdt")
                assert info.state.messages == 1
                message = await js.get_msg("tp-cmd-sol-usdt", 1)
                assert message.data is not None
                assert decode_command(message.data, 1, 0) == SetTradingMode(
                    1, 0, mode=TradingMode.HALTED)
                entry = await kv.get("sol-usdt")
                assert entry.value is not None
                assert decode_definition(entry.value).trading_mode is TradingMode.HALTED
                assert await initial_trading_mode(js, "sol-usdt") is TradingMode.OPEN

                # The same manifest again changes nothing; a market removed from the stream
                # side (no command stream) gets no command, its new stream the new mode.
                await publish_markets(server.url, [HALTED], SETTINGS, server.access("admin"))
                assert (await js.stream_info("tp-cmd-sol-usdt")).state.messages == 1
                await js.delete_stream("tp-cmd-sol-usdt")
                assert await sequence_mode_change(js, kv, SOL) is None
                await publish_markets(server.url, [SOL], SETTINGS, server.access("admin"))
                info = await js.stream_info("tp-cmd-sol-usdt")
                assert info.state.messages == 0
                assert await initial_trading_mode(js, "sol-usdt") is TradingMode.OPEN
            finally:
                await nc.close()

    run(scenario())


def test_admin_cancel_all_is_sequenced_like_an_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob:
            await alice.place("sol-usdt", "sell", "1", "101")
            await bob.place("sol-usdt", "buy", "1", "99")
            js = exchange.nc.jetstream()
            sequence = await publish_admin(js, "sol-usdt", CancelAll(0, 0, account=None),
                                           "sol-usdt:cancel-all")
            assert sequence == 3
            assert await publish_admin(js, "sol-usdt", CancelAll(0, 0, account=None),
                                       "sol-usdt:cancel-all") == 3  # a retry: stored once
            service = exchange.services["sol-usdt"]
            await eventually(lambda: service.engine.last_sequence == 3)
            book = service.engine.l2(10)
            assert (book.bids, book.asks) == ([], [])

    run(scenario())
