"""The engine as a service: NATS in and out around the pure core."""

from tradeplane_engine.service.admin import publish_admin
from tradeplane_engine.service.market import MarketService
from tradeplane_engine.service.runner import run_engines
from tradeplane_engine.service.streams import (
    StreamSettings,
    ensure_market_streams,
    markets_bucket,
    replay_spec,
)

__all__ = [
    "MarketService",
    "StreamSettings",
    "ensure_market_streams",
    "markets_bucket",
    "publish_admin",
    "replay_spec",
    "run_engines",
]
