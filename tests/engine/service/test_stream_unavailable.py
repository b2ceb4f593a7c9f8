"""A stream that cannot take a message for now is waited out, on a real nats-server: a
stream without a leader (between leaders, or a cluster without a quorum) answers a
publish as a stream that does not exist yet does, with NATS's no-responders status.
The engine's events publisher and the ledger's stream writer send the message again
until the stream takes it, and it is stored once.

Before, the publisher took that status for a refusal and stopped its engine, and the
writer took it for the stream's acknowledgement: a funded order forwarded then never
reached its market, and a settlement was lost."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.engine.service.test_forged_events import events
from tests.support.exchange import SETTINGS, SOL, eventually, run
from tradeplane.processes import NatsCluster, NatsServer
from tradeplane_engine.connection import server_urls
from tradeplane_engine.service.events import EventsPublisher
from tradeplane_engine.service.writer import NO_STREAM, Outbound, StreamWriter
from tradeplane_engine.streams import StreamSettings, ensure_market_streams
from tradeplane_engine.wire import (
    HEADER_MESSAGE_ID,
    command_stream,
    command_subject,
    decode_pub_ack,
    event_stream,
    stream_unavailable,
)

WAITED = "(no stream leader)"
"""What the resend's log line says of why."""


@contextlib.asynccontextmanager
async def admin(tmp_path: Path) -> AsyncIterator[Client]:
    """A real nats-server, and the administrator's connection to it."""
    with NatsServer.secured(tmp_path / "nats") as server:
        nc = await nats.connect(server.url, **server.access("admin").options())
        try:
            yield nc
        finally:
            await nc.close()


def resent(caplog: pytest.LogCaptureFixture, module: str) -> bool:
    """Whether ``tradeplane_engine.service.<module>`` logged sending a message again
    because its stream had no leader."""
    return any(record.name == f"tradeplane_engine.service.{module}"
               and WAITED in record.getMessage() for record in caplog.records)


def test_what_says_a_stream_cannot_take_a_message_for_now() -> None:
    assert stream_unavailable(b"", {"Status": "503"}) == "no stream leader"
    assert stream_unavailable(
        b'{"error":{"code":503,"err_code":10008,"description":"JetStream system '
        b'temporarily unavailable"}}', None) == "JetStream system temporarily unavailable"
    assert stream_unavailable(
        b'{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in '
        b'process"},"stream":"tp-cmd-sol-usdt","seq":0}', None) == (
        "duplicate message id is in process")
    # The stream's own answers, a refusal included, are answers.
    assert stream_unavailable(b'{"stream":"tp-cmd-sol-usdt","seq":3}', None) is None
    assert stream_unavailable(
        b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 2"}}',
        None) is None
    assert stream_unavailable(b"", None) is None
    assert stream_unavailable(b'{"error": not json', None) is None


def test_the_events_publisher_waits_for_a_stream_that_cannot_take_its_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tradeplane_engine.service.events")

    async def scenario() -> None:
        async with admin(tmp_path) as nc:
            publisher = EventsPublisher(nc, "sol-usdt")
            await publisher.start()
            publishing = asyncio.create_task(publisher.publish([(1, events(1))], after=0))
            await eventually(lambda: WAITED in caplog.text, 10,
                             "the publisher sending its message again")
            assert not publishing.done()
            js = nc.jetstream()
            await ensure_market_streams(js, SOL, SETTINGS)
            await asyncio.wait_for(publishing, 10)
            stored = await js.get_msg(event_stream("sol-usdt"), 1)
            assert stored.data == events(1)
            assert (await js.stream_info(event_stream("sol-usdt"))).state.messages == 1
            await publisher.stop()

    run(scenario())


def test_the_stream_writer_answers_for_a_stream_that_does_not_exist(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A subject no stream takes (a market deleted while the ledger forwarded an order to
    it) is answered as JetStream answers a missing stream, after one wait: a writer that
    waited for ever would hold up every other market's forwards."""
    caplog.set_level(logging.WARNING, "tradeplane_engine.service.writer")

    async def scenario() -> None:
        async with admin(tmp_path) as nc:
            writer = StreamWriter(nc, "ledger-0")
            await writer.start()
            [ack] = await writer.write([order(1)])
            assert ack == NO_STREAM
            answer = decode_pub_ack(ack)
            assert answer.error is not None
            assert (answer.seq, answer.error["description"]) == (0, "stream not found")
            assert "stream tp-cmd-sol-usdt does not exist" in caplog.text
            await writer.stop()

    run(scenario())


def order(number: int) -> Outbound:
    return Outbound(command_subject("sol-usdt"), b'{"type":"cancel"}',
                    {HEADER_MESSAGE_ID: f"ledger-0:forward:{number}"},
                    command_stream("sol-usdt"))


async def without_leader(js: JetStreamContext, stream: str) -> bool:
    """No node answers for the stream, or the one that does says it has no leader."""
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return True
    return info.cluster is not None and info.cluster.leader is None


def test_a_cluster_without_quorum_is_waited_out(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Three nodes, every stream on three replicas; two nodes killed: the events
    publisher and the writer each get NATS's no-responders status, send again every
    2 s, and are done once a second node is back, each message stored once."""
    caplog.set_level(logging.WARNING, "tradeplane_engine.service")

    async def scenario() -> None:
        with NatsCluster.secured(tmp_path / "nats") as nodes:
            nc = await nats.connect(server_urls(nodes.url), **nodes.access("admin").options(),
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.25)
            try:
                js = nc.jetstream(timeout=2)
                await ensure_market_streams(js, SOL, StreamSettings(replicas=3))
                publisher = EventsPublisher(nc, "sol-usdt")
                writer = StreamWriter(nc, "ledger-0")
                await publisher.start()
                await writer.start()
                connected = nc.connected_url
                assert connected is not None
                lost = [node for node in nodes.nodes if node.url.rpartition(":")[2]
                        != str(connected.port)][:2]
                for node in lost:
                    node.kill()
                await eventually(lambda: without_leader(js, event_stream("sol-usdt")), 30,
                                 "the events stream without a leader")
                publishing = asyncio.create_task(publisher.publish([(1, events(1))], after=0))
                writing = asyncio.create_task(writer.write([order(1)]))
                await eventually(lambda: resent(caplog, "events") and resent(caplog, "writer"),
                                 30, "both sending their message again")
                assert not publishing.done()
                assert not writing.done()
                lost[0].start()
                # How long JetStream takes to elect is its own (2-8 s here, longer on a
                # loaded machine); once a stream has a leader, the next send (2 s) is in.
                streams = (event_stream("sol-usdt"), command_stream("sol-usdt"))
                for stream in streams:
                    await eventually(functools.partial(with_leader, js, stream), 120,
                                     f"{stream} with a leader again")
                done, _ = await asyncio.wait({publishing, writing}, timeout=30)
                assert len(done) == 2, (
                    "not stored 30 s after both streams had a leader: "
                    f"{[await steadily(functools.partial(js.stream_info, s)) for s in streams]}")
                await publishing
                [ack] = await writing
                assert (decode_pub_ack(ack).seq, decode_pub_ack(ack).error) == (1, None)
                for stream in streams:
                    info = await steadily(functools.partial(js.stream_info, stream))
                    assert info.state.messages == 1
                stored = await steadily(functools.partial(js.get_msg, streams[0], 1))
                assert stored.data == events(1)
                await publisher.stop()
                await writer.stop()
            finally:
                await nc.close()

    run(scenario(), timeout=240)


async def with_leader(js: JetStreamContext, stream: str) -> bool:
    """A node answers for the stream, and says it has a leader."""
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return False
    return info.cluster is not None and info.cluster.leader is not None


async def steadily[T](read: Callable[[], Awaitable[T]]) -> T:
    """A JetStream read, asked again while a cluster just back answers that it is not
    available yet (503) or does not answer."""
    answers: list[T] = []

    async def answered() -> bool:
        try:
            answers.append(await read())
        except (nats.errors.Error, TimeoutError):
            return False
        return True

    await eventually(answered, 30, "a JetStream read answered")
    return answers[-1]
