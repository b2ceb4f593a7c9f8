"""A replica's status: answered on request, and reported every second.

``tp.engine.<market>.<replica>.status`` is any replica's own status subject (the
market's ``status`` subject is the leader's, see ``requests``). The reports go to the
replicas' bucket (``tp-replicas``, key ``<market>.<replica>``), where the operator and
``tradeplane status`` read them and a leaving leader picks the standby to hand over to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.wire import command_stream

if TYPE_CHECKING:
    from tradeplane_engine.service.market import MarketService

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


class ReplicaReports:
    """``service``'s status, as answered and as reported."""

    def __init__(self, service: MarketService) -> None:
        self.service = service

    def status(self, *, with_hash: bool = False) -> dict[str, Any]:
        service = self.service
        engine = service.engine
        status: dict[str, Any] = {
            "market": service.market, "replica": service.replica, "pid": os.getpid(),
            "role": "leader" if service.leading else "standby", "epoch": service.epoch,
            "pending": len(service.pending), "ready": service.ready.is_set(),
            "failovers": service.failovers, "lastFailover": service.last_failover,
            "sequence": engine.last_sequence, "publishedThrough": service.published_through,
            "bookSequence": service.market_data.book_sequence, "mode": engine.mode.value,
            "nextOrderId": engine.next_order_id, "nextTradeId": engine.next_trade_id,
            "replayed": service.replayed,
        }
        if with_hash:
            status["stateHash"] = engine.state_hash()
        return status

    async def on_status(self, msg: Msg) -> None:
        """The market's status subject is the leader's; ``<market>.<replica>.status`` anyone's."""
        if self.service.leading or msg.subject.endswith(f".{self.service.replica}.status"):
            await msg.respond(_encode(self.status(with_hash=msg.data == b"hash")))

    async def run(self, replicas: KeyValue) -> None:
        """Publish this replica's status every second, for the operator and ``status``."""
        service = self.service
        market = service.market
        while True:
            try:
                info = await service.js.stream_info(command_stream(market))
                status = self.status()
                status["lag"] = max(0, info.state.last_seq - service.engine.last_sequence)
                service.metrics.report_lag(status["lag"])
                status["host"] = socket.gethostname()
                await replicas.put(f"{market}.{service.replica}", _encode(status))
            except NATS_ERRORS as exc:
                log.debug("market %s: status not published: %s", market, exc)
            await asyncio.sleep(1.0)
