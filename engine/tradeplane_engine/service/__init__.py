"""The engine as a service: NATS in and out around the pure core."""

from tradeplane_engine.service.admin import publish_admin
from tradeplane_engine.service.engines import run_engines
from tradeplane_engine.service.market import MarketService

__all__ = [
    "MarketService",
    "publish_admin",
    "run_engines",
]
