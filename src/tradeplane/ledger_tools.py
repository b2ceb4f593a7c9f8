"""An administrator's ledger commands: assets, deposits, withdrawals (docs/ledger.md).

A command goes into its shard's stream under a message id (a transfer's is its
``transferId``), so a retry is sequenced once; the answer is what the shard's leader
stored for it in the shard's events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from tradeplane_engine.ledger import AnyLedgerCommand, DefineAsset, Deposit, Withdraw
from tradeplane_engine.wire import (
    HEADER_MESSAGE_ID,
    LedgerBatch,
    LedgerSource,
    decode_ledger_events,
    decode_pub_ack,
    encode_ledger_command,
    header_sequence,
    ledger_command_subject,
    ledger_event_stream,
    ledger_event_subject,
)


class Outcome(NamedTuple):
    batch: LedgerBatch
    """What the shard did with the command (the first time)."""
    again: bool = False
    """The command was sequenced before (the same message id): nothing changed now."""


class LedgerToolError(Exception):
    """The command was not sequenced, or its outcome did not come in time."""


def message_id(command: AnyLedgerCommand) -> str:
    """What makes a retry of the command the same command."""
    if isinstance(command, Deposit | Withdraw):
        return f"transfer:{command.transfer_id}"
    if isinstance(command, DefineAsset):
        return f"asset:{command.asset}:{command.decimals}"
    raise ValueError(f"not an administrator's command: {type(command).__name__}")


async def submit(nc: Client, shard: int, command: AnyLedgerCommand, *,
                 timeout: float = 10.0) -> Outcome:
    """Sequence ``command`` in ``shard``'s stream; what the shard did with it."""
    outcome: asyncio.Future[LedgerBatch] = asyncio.get_running_loop().create_future()
    wanted: list[int] = []
    seen: dict[int, bytes] = {}

    async def on_event(msg: Msg) -> None:
        sequence = header_sequence(msg.headers)
        if sequence is None:
            return
        seen[sequence] = msg.data
        if wanted and sequence == wanted[0] and not outcome.done():
            found = _batch_of(msg.data, sequence)
            if found is not None:
                outcome.set_result(found)

    subscription = await nc.subscribe(ledger_event_subject(shard), cb=on_event)
    try:
        reply = await nc.request(ledger_command_subject(shard, LedgerSource.ADMIN),
                                 encode_ledger_command(command),
                                 timeout=timeout,
                                 headers={HEADER_MESSAGE_ID: message_id(command)})
        ack = decode_pub_ack(reply.data)
        if ack.error is not None or not ack.seq:
            raise LedgerToolError(f"ledger shard {shard} did not take the command: "
                                  f"{ack.error}")
        wanted.append(ack.seq)
        if ack.seq in seen and (found := _batch_of(seen[ack.seq], ack.seq)) is not None:
            return Outcome(found, ack.duplicate)
        if ack.duplicate:
            # Sequenced before: its outcome is in the events stream already.
            stored = await stored_outcome(nc, shard, ack.seq)
            if stored is not None:
                return Outcome(stored, again=True)
        try:
            return Outcome(await asyncio.wait_for(outcome, timeout), ack.duplicate)
        except TimeoutError:
            raise LedgerToolError(f"ledger shard {shard}: sequenced as {ack.seq}, no outcome "
                                  f"within {timeout} s (is a ledger replica leading?)") from None
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


def _batch_of(data: bytes, sequence: int) -> LedgerBatch | None:
    """Command ``sequence``'s batch in an events message, if it is one holding it."""
    try:
        batches = decode_ledger_events(data)
    except msgspec.DecodeError:
        return None
    return next((batch for batch in batches if batch.sequence == sequence), None)


async def stored_outcome(nc: Client, shard: int, sequence: int) -> LedgerBatch | None:
    """Command ``sequence``'s batch in the shard's events stream (None: not there yet):
    in the first message whose ``Tp-Sequence`` (its last command) is not below it,
    found by bisection, as ``Tp-Sequence`` grows along the stream."""
    js = nc.jetstream()
    stream = ledger_event_stream(shard)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    low, high = info.state.first_seq, info.state.last_seq
    found: RawStreamMsg | None = None
    while low <= high:
        middle = (low + high) // 2
        try:
            message = await js.get_msg(stream, middle)
        except NotFoundError:
            return None
        last = header_sequence(message.headers)
        if last is None:
            return None  # a message no shard wrote: nothing to go by
        if last >= sequence:
            found, high = message, middle - 1
        else:
            low = middle + 1
    return None if found is None else _batch_of(found.data or b"", sequence)
