"""The gateway: tradeplane's public NATS protocol, order entry at the edge, the client SDK."""

from tradeplane_gateway.client import Client, connect
from tradeplane_gateway.errors import ConnectionLostError, EdgeCode, RequestError, TradeplaneError
from tradeplane_gateway.local_book import LocalBook
from tradeplane_gateway.protocol import Fill, OrderState, Reply

__all__ = [
    "Client",
    "ConnectionLostError",
    "EdgeCode",
    "Fill",
    "LocalBook",
    "OrderState",
    "Reply",
    "RequestError",
    "TradeplaneError",
    "connect",
]
