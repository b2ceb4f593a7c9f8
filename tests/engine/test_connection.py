"""A service's NATS client: headers written and read as nats-py does, for less.

``ServiceClient`` replaces nats-py's header encoding and parsing (docs/performance.md).
What it writes must be what nats-py writes, byte for byte, for any headers nats-py
takes, and what nats-py refuses it must refuse the same way; what it reads from a
header block must be what nats-py reads; and a real nats-server must carry headers
between it and a plain nats-py client unchanged, both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadHeaderError

from tradeplane.processes import NatsServer
from tradeplane_engine.connection import ServiceClient, connect

HEADERS: list[dict[str, Any]] = [
    {"Nats-Msg-Id": "alice:order-1"},
    {"Tp-Reply": "_GW.abc.r.17", "traceparent":
     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Nats-Msg-Id": "L0-5-2"},
    {"  Padded-Name  ": "  padded value  "},
    {"Broken": "line one\r\nline two\rthree\nfour"},
    {"": "an empty name is skipped", "Kept": "yes"},
    {"Unicode": "prix 12,5 € — ok"},
    {"Empty-Value": ""},
    {},
]


async def _written(client: Client, headers: dict[str, Any]) -> bytes:
    """What ``client`` queues for the server when publishing with ``headers``."""
    client._pending = []
    await client._send_publish("tp.cmd.sol-usdt", "_INBOX.x", b'{"a":1}', 7, headers)
    return b"".join(client._pending)


@pytest.mark.parametrize("headers", HEADERS)
def test_the_wire_is_nats_pys_byte_for_byte(headers: dict[str, Any]) -> None:
    async def scenario() -> None:
        ours, theirs = ServiceClient(), Client()
        # Twice: the second time ours encodes from the names it kept.
        for _ in range(2):
            assert await _written(ours, headers) == await _written(theirs, headers)
        assert ours.stats["out_msgs"] == theirs.stats["out_msgs"] == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["Bad Name", "bad:name", "nul\x00", "é"])
def test_a_name_nats_py_refuses_is_refused_alike(name: str) -> None:
    async def scenario() -> None:
        for client in (Client(), ServiceClient()):
            with pytest.raises(BadHeaderError):
                await _written(client, {name: "value"})
        ours = ServiceClient()
        for _ in range(2):  # refused again, not kept as good
            with pytest.raises(BadHeaderError):
                await _written(ours, {name: "value"})

    asyncio.run(scenario())


BLOCKS = [
    b"Tp-Reply: _GW.abc.r.17\r\nNats-Msg-Id: alice:1\r\n\r\n",
    b"traceparent:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"  Padded :   spaced value \t\r\nNo colon here\r\n\r\n",
    b"Bad Name: skipped\r\nGood: kept\r\n\r\n",
    b"\xc3\xa9t\xc3\xa9: not ascii\r\nValue: caf\xc3\xa9 \xff broken\r\n\r\n",
    b": an empty name\r\nSame: one\r\nSame: two\r\n\r\n",
    b"Tab\tName: skipped\r\nColon: a: b: c\r\n",
    b"",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_a_header_block_reads_as_nats_py_reads_it(block: bytes) -> None:
    for _ in range(2):  # the second time from the names kept
        assert ServiceClient._parse_header_lines(block) == Client._parse_header_lines(block)


async def _delivered(sub: Subscription,
                     publish: Callable[[], Awaitable[None]]) -> Msg:
    """``publish`` again until ``sub`` has a message; the first that arrives. (Between
    plain nats-py clients too, a message published just after another connection
    subscribed and flushed is now and then not delivered: 2 in 40 here.)"""
    for _ in range(50):
        await publish()
        with contextlib.suppress(nats.errors.TimeoutError):
            return await sub.next_msg(timeout=0.1)
    raise AssertionError("nothing arrived in 5 s")


def test_headers_arrive_as_sent_through_a_real_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer(tmp_path / "nats").start() as server:
            sender = await connect(server.url, "header-test", "engine")
            receiver = await nats.connect(server.url)
            try:
                assert isinstance(sender, ServiceClient)
                sub = await receiver.subscribe("tp.test")
                await receiver.flush()
                sent = {"Tp-Reply": "_GW.abc.r.1", "Nats-Msg-Id": "alice:1",
                        "Broken": "a\r\nb"}
                msg = await _delivered(sub, lambda: sender.publish("tp.test", b"body",
                                                                   headers=sent))
                assert msg.data == b"body"
                assert msg.headers == {"Tp-Reply": "_GW.abc.r.1", "Nats-Msg-Id": "alice:1",
                                       "Broken": "a  b"}
                # And the other way: a plain client's headers, read by ours.
                back = await sender.subscribe("tp.back")
                await sender.flush()
                msg = await _delivered(back, lambda: receiver.publish(
                    "tp.back", b"again", headers={"Tp-Ack": "_GW.x.y.2", "Padded": "  v  "}))
                assert msg.data == b"again"
                assert msg.headers == {"Tp-Ack": "_GW.x.y.2", "Padded": "v"}
            finally:
                await sender.close()
                await receiver.close()

    asyncio.run(scenario())
