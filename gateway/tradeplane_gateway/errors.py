"""Errors: the codes the gateway answers with, and what the gateway and its SDK raise.

Codes share one number space with the engine's reject codes (docs/engine.md): the
engine uses 1xx-4xx, the edge uses 9xx, so a code alone says who refused and why.

    TradeplaneError
    ├── RequestError        a request was refused; ``code`` is stable, ``reason`` is for people
    ├── ConnectionLostError the NATS connection is gone
    ├── EdgeError           validation: a request refused at the edge (becomes a reply)
    ├── AccountError        accounts: an account operation that cannot be done
    └── TokenError          auth: a token that is not a NATS JWT (also a ValueError)

The client SDK raises the first two.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tradeplane_gateway.protocol import OrderState


class EdgeCode(IntEnum):
    """Why the gateway refused a request before it reached a market's command stream."""

    MALFORMED_JSON = 901
    """The payload is not a JSON object."""
    UNKNOWN_FIELD = 902
    """The request has a field the protocol does not define."""
    INVALID_FIELD = 903
    """A field is missing, has the wrong JSON type, a value outside its set or range, or is
    given twice (a key twice in any object); or fields do not go together (a limit order
    without a price). A decimal string that is not a decimal is not this: it is an invalid
    value of its field, 201 or 202 as the engine numbers them."""
    PAYLOAD_TOO_LARGE = 904
    """The payload is larger than the gateway accepts (4 KiB)."""
    UNKNOWN_MARKET = 905
    """No market of that name is defined (yet)."""
    INVALID_ACCOUNT = 906
    """The account in the subject is not a valid account name."""
    UNKNOWN_REQUEST = 907
    """The subject names no request the gateway serves: it is not
    ``tp.api.<account>.order.<verb>`` with a verb the protocol defines, nor
    ``tp.api.<account>.account.balances``."""
    INVALID_CLIENT_ORDER_ID = 908
    """Client order ids are 1-36 characters of A-Z, a-z, 0-9, ``_`` and ``-``."""
    NOT_SEQUENCED = 909
    """The command stream did not acknowledge in time; retry with the same client order id
    (a retry within the duplicate window is applied at most once)."""
    RESULT_TIMEOUT = 910
    """The command was sequenced (a retried place: before, when its clientOrderId was
    first sent) but its result did not come in time; ask for its status."""
    ENGINE_UNAVAILABLE = 911
    """The market's engine did not answer a query (status, open orders); never the
    answer to an order."""
    HISTORY_UNAVAILABLE = 912
    """No recorder answered a history query (no database configured, or it is down)."""
    DUPLICATE_MISMATCH = 913
    """A place reused a clientOrderId within the duplicate window with other terms: it
    was not placed; the reply carries the original's sequence and order."""
    ORDER_NOT_OPEN = 914
    """A replace named an order that exists but is no longer open (filled, canceled, or
    a refused place): nothing changed; the reply carries the order as it is."""
    BALANCES_UNAVAILABLE = 915
    """The exchange keeps no balances (it runs without a ledger), or no ledger shard
    answered in time."""


class TradeplaneError(Exception):
    """Base of every error the gateway raises, the client SDK's included."""


class RequestError(TradeplaneError):
    """The exchange refused a request: an edge code (9xx) or an engine reject (1xx-4xx)."""

    def __init__(self, code: int, name: str, reason: str, sequence: int | None = None,
                 client_order_id: str | None = None, order: OrderState | None = None) -> None:
        super().__init__(f"{code} {name}: {reason}")
        self.code = code
        self.name = name
        self.reason = reason
        self.sequence = sequence
        """The command's sequence when it was sequenced: refused by the engine, or
        ``RESULT_TIMEOUT`` (None: never sequenced)."""
        self.client_order_id = client_order_id
        """The order's client order id when the reply names it (the one the gateway
        generated if none was given): after ``RESULT_TIMEOUT``, ask ``status`` with it."""
        self.order = order
        """The order the refusal is about, when the reply carries it: the original of a
        ``DUPLICATE_MISMATCH``, the finished order of an ``ORDER_NOT_OPEN``."""


class ConnectionLostError(TradeplaneError):
    """The connection to NATS is closed."""
