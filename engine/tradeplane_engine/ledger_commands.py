"""A ledger shard's commands as its stream holds them: decoded, and checked against the
source their subject names (``wire.LEDGER_SOURCES``).

What every replica of a shard applies, and what the snapshotter applies beside them, so
that both skip exactly the same messages: the subject is part of what the stream
sequenced, so the check is as deterministic as the ledger itself.
"""

from __future__ import annotations

import logging

import msgspec

from tradeplane_engine.feed import SequencedCommand
from tradeplane_engine.ledger import AnyLedgerCommand
from tradeplane_engine.wire import LEDGER_SOURCES, decode_ledger_command, ledger_source
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

log = logging.getLogger(__name__)


def ledger_command(name: str, command: SequencedCommand) -> AnyLedgerCommand | None:
    """A ledger command from its stream, if it is one and came from a source that may
    send it (``wire.LEDGER_SOURCES``); None, logged and counted, otherwise. Every replica
    (and the snapshotter) skips the same messages: the subject is in the stream."""
    try:
        decoded = decode_ledger_command(command.data, command.sequence, command.timestamp)
    except msgspec.DecodeError as exc:  # ValidationError included
        log.warning("%s: command %d is not a ledger command: %s", name, command.sequence,
                    str(exc)[:200])
        UNTRUSTED_SKIPPED.labels("ledger", "command").inc()
        return None
    source = ledger_source(command.subject)
    if source is None or not isinstance(decoded, LEDGER_SOURCES[source]):
        log.warning("%s: command %d, a %s, came from %r, which may not send it; skipped",
                    name, command.sequence, type(decoded).__name__, command.subject[-40:])
        UNTRUSTED_SKIPPED.labels("ledger", "command source").inc()
        return None
    return decoded
