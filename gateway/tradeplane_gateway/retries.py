"""A place retried under a clientOrderId already sequenced: the same order, or another?

Within the command stream's duplicate window a place with a clientOrderId sent before
is not sequenced again (``Nats-Msg-Id``), whatever its body. A retry of the same order
is then answered with the original; a different order under the same id must not be,
or its sender would take the original for the order it meant to place. The gateway
compares the retry with what the engine (or PostgreSQL) says of the original: its terms
as they are now (a replace changes price and quantity), so it errs towards "different".
"""

from __future__ import annotations

from typing import Any

import msgspec

from tradeplane_engine.core.commands import Place
from tradeplane_engine.wire import OrderRecord, PublicFormatter


def differences(retry: Place, original: dict[str, Any],
                formatter: PublicFormatter) -> list[str]:
    """How ``retry`` differs from the original order, one ``"<field> <retry's> (the
    original's: <original's>)"`` per field; empty when they agree on everything known.

    ``original`` is an ``order`` answer of the engine or of PostgreSQL (an
    ``OrderRecord``): ``type``, ``timeInForce``, ``postOnly`` and ``stp`` ride along in
    those (not in replies), and PostgreSQL does not keep ``stp``. A term that is None was
    not said, and is not compared. A refused place keeps no terms (its events have
    none): nothing to compare."""
    terms = msgspec.convert(original, OrderRecord)
    if terms.side is None:  # a refused place, or an answer without terms
        return []
    asked: dict[str, tuple[Any, Any]] = {
        "side": (retry.side.value, terms.side),
        "price": (formatter.price(retry.price) if retry.price else None, terms.price),
        "quantity": (formatter.quantity(retry.quantity) if retry.quantity else None,
                     terms.quantity),
        "quoteAmount": (formatter.notional(retry.quote_amount) if retry.quote_amount
                        else None, terms.quote_amount),
    }
    optional: dict[str, tuple[Any, Any]] = {
        "type": (retry.order_type.value, terms.type),
        "timeInForce": (retry.time_in_force.value, terms.time_in_force),
        "postOnly": (retry.post_only, terms.post_only),
        "stp": (retry.stp.value, terms.stp),
    }
    asked.update({name: pair for name, pair in optional.items() if pair[1] is not None})
    return [f"{name} {_shown(mine)} (the original's: {_shown(theirs)})"
            for name, (mine, theirs) in asked.items() if mine != theirs]


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
