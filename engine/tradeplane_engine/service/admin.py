"""Admin commands (``SetTradingMode``, ``CancelAll`` of every account) into a market's
command stream.

An admin act changes the book, so it must be sequenced with the orders: published to
the command stream like any order, it gets its place in the market's total order, and
every replica, replay and snapshot applies it at the same point. Changing the market's
definition in the markets bucket alone would change nothing the engines do (they read
it at start), and a replay would not see it at all.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from tradeplane_engine.core.commands import CancelAll, SetTradingMode
from tradeplane_engine.wire import (
    HEADER_MESSAGE_ID,
    command_stream,
    command_subject,
    encode_command,
)


async def publish_admin(js: JetStreamContext, market: str,
                        command: SetTradingMode | CancelAll, msg_id: str,
                        timeout: float = 5.0) -> int:
    """Sequence an admin command in the market's command stream; its stream sequence.

    ``msg_id`` becomes the ``Nats-Msg-Id``: a retry with the same id within the stream's
    duplicate window is stored once, and the sequence returned is the first one's. The
    command's own ``sequence`` and ``timestamp`` are ignored (the stream stamps them).
    Only the command stream may take the message (the publish names it), so a missing
    stream is an error rather than a command lost on a plain subject.
    """
    ack = await js.publish(command_subject(market), encode_command(command),
                           timeout=timeout, stream=command_stream(market),
                           headers={HEADER_MESSAGE_ID: msg_id})
    return ack.seq
