"""A well-formed events message published by someone else under the message id of a
command's events, on a real nats-server: when the leader's publish passes the fence
(its expected last sequence counts the forged message, as for a leader that took over
after it), the stream drops the real events as a duplicate. The publisher notices that
the duplicate's bytes are not its own, counts it and raises ``Forged``, which makes the
leader stop leading as when fenced; a duplicate that is its own bytes is no alarm."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from prometheus_client import REGISTRY

from tests.support.exchange import SETTINGS, SOL, run
from tradeplane.processes import NatsServer
from tradeplane_engine.core import OrderAccepted, OrderType, SelfTradePrevention, Side, TimeInForce
from tradeplane_engine.service.events import EventsPublisher, Fenced, Forged
from tradeplane_engine.streams import ensure_market_streams
from tradeplane_engine.wire import HEADER_MESSAGE_ID, EventBatch, encode_events, event_subject


def forged() -> float:
    return REGISTRY.get_sample_value("tradeplane_untrusted_skipped_total", {
        "component": "engine", "what": "forged events message"}) or 0.0


def events(sequence: int) -> bytes:
    accepted = OrderAccepted(sequence, "alice", "", Side.BUY, OrderType.LIMIT, 9900, 100, 0,
                             TimeInForce.GTC, False, SelfTradePrevention.EXPIRE_MAKER)
    return encode_events(EventBatch("sol-usdt", sequence, sequence, [accepted]))


def test_a_duplicate_that_is_not_the_leaders_events_is_noticed(tmp_path: Path) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            nc = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = nc.jetstream()
                await ensure_market_streams(js, SOL, SETTINGS)
                publisher = EventsPublisher(nc, "sol-usdt")
                await publisher.start()
                # Someone else's message under command 1's id (and the same bytes for
                # command 2's: a copy of what the leader would write is no harm).
                await js.publish(event_subject("sol-usdt"),
                                 encode_events(EventBatch("sol-usdt", 1, 1, [])),
                                 headers={HEADER_MESSAGE_ID: "sol-usdt:1"})
                await js.publish(event_subject("sol-usdt"), events(2),
                                 headers={HEADER_MESSAGE_ID: "sol-usdt:2"})
                before = forged()
                await publisher.publish([(2, events(2))], after=2)
                assert forged() == before
                with pytest.raises(Forged) as caught:
                    await publisher.publish([(1, events(1))], after=2)
                assert isinstance(caught.value, Fenced)  # the leader steps down for it
                assert forged() == before + 1
                await publisher.stop()
            finally:
                await nc.close()

    run(scenario())
