"""The command feed over a real JetStream stream, when its consumer delivers past the
sequence it expects: a consumer that lost its place is made again from where the feed
stands; a stream that lost what comes next stops the feed (``FeedError``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.support.exchange import SETTINGS, SOL, eventually, run
from tradeplane.processes import NatsServer
from tradeplane_engine.feed import FeedError, SequencedCommand, StreamFeed
from tradeplane_engine.streams import ensure_market_streams
from tradeplane_engine.wire import command_stream, command_subject

STREAM = command_stream(SOL.name)


@contextlib.asynccontextmanager
async def plain_nats(directory: Path) -> AsyncIterator[Client]:
    """A nats-server and a connection to it."""
    with NatsServer(directory / "nats").start() as server:
        nc = await nats.connect(server.url)
        try:
            yield nc
        finally:
            await nc.close()


async def delivered(feed: StreamFeed, nc: Client, consumer: str | None, sequence: int) -> None:
    """What the feed makes of a delivery of ``sequence`` by ``consumer``, as a consumer
    that lost its place under a lost NATS node delivers (nats-server lets no client
    publish with a ``$JS.ACK`` reply subject, so it is handed to the feed directly)."""
    await feed._on_message(Msg(nc, command_subject(SOL.name), delivery(consumer, sequence),
                               b"x"))


async def read(feed: StreamFeed, count: int) -> list[SequencedCommand]:
    """The next ``count`` commands the feed hands over."""
    out: list[SequencedCommand] = []
    while len(out) < count:
        out.extend(await feed.next_batch())
    return out


def delivery(consumer: str | None, sequence: int) -> str:
    """A JetStream delivery's reply subject, as ``consumer``'s of ``sequence``."""
    return f"$JS.ACK.{STREAM}.{consumer}.1.{sequence}.{sequence}.{time.time_ns()}.0"


def test_a_consumer_that_skips_ahead_is_made_again_where_the_feed_stands(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with plain_nats(tmp_path) as nc:
            js = nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            for number in range(3):
                await js.publish(command_subject(SOL.name), b"%d" % number)
            feed = StreamFeed(nc, STREAM, 1)
            await feed.start()
            try:
                assert [command.sequence for command in await read(feed, 3)] == [1, 2, 3]
                first = feed._consumer
                reading = asyncio.create_task(read(feed, 1))
                await delivered(feed, nc, first, 9)
                await eventually(lambda: feed._consumer not in (None, first),
                                 what="a consumer made again")
                second = feed._consumer
                await js.publish(command_subject(SOL.name), b"3")
                [fourth] = await reading
                assert (fourth.sequence, fourth.data) == (4, b"3")
                # What the replaced consumer still delivers is not the feed's any more.
                await delivered(feed, nc, first, 20)
                await js.publish(command_subject(SOL.name), b"4")
                assert [command.sequence for command in await read(feed, 1)] == [5]
                assert feed._consumer == second
            finally:
                await feed.stop()

    run(scenario())


def test_a_stream_that_no_longer_holds_the_next_command_stops_the_feed(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with plain_nats(tmp_path) as nc:
            js = nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            for number in range(4):
                await js.publish(command_subject(SOL.name), b"%d" % number)
            await js.purge_stream(STREAM, keep=1)  # it starts at 4 now
            feed = StreamFeed(nc, STREAM, 2)
            await feed.start()
            try:
                with pytest.raises(FeedError, match="expected sequence 2, got 4; the stream "
                                                    "starts at 4"):
                    await read(feed, 1)
            finally:
                await feed.stop()

    run(scenario())
