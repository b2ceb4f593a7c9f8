"""Answers to gateways: each on its own subject, or a batch's together where the
subject asks for that (``wire.grouped_subject``: ``<inbox>.<kind>.<token>``).

An engine answers a batch's results this way (kind ``g``), a ledger shard the
acknowledgements and refusals it relays (kind ``k``). A grouped message stays under
``wire.GROUPED_BYTES`` (NATS refuses a message over its payload limit, 1 MiB by
default): what would take it over goes in the next one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tradeplane_engine.wire import (
    GROUPED_BYTES,
    HEADER_ORDER,
    HEADER_REFUSED,
    grouped,
    grouped_subject,
    join_batches,
)

type Publish = Callable[..., Awaitable[None]]


class Answers:
    """Collects one batch's answers; ``send`` publishes what is still grouped."""

    def __init__(self, publish: Publish, kind: str, limit: int = GROUPED_BYTES) -> None:
        self.publish = publish
        self.kind = kind
        self.limit = limit
        self._grouped: dict[str, list[bytes]] = {}
        self._sizes: dict[str, int] = {}

    async def add(self, subject: str, answer: bytes, *, order: str | None = None,
                  refused: bool = False) -> None:
        group = grouped_subject(subject, self.kind)
        if group is None:
            headers = ({HEADER_ORDER: order} if order else {}) | (
                {HEADER_REFUSED: "1"} if refused else {})
            await self.publish(subject, answer, headers=headers or None)
            return
        parent, item = group[0], grouped(group[1], answer, order, refused)
        pending = self._grouped.setdefault(parent, [])
        if pending and self._sizes[parent] + len(item) > self.limit:
            await self.publish(parent, join_batches(pending))
            pending.clear()
            self._sizes[parent] = 0
        pending.append(item)
        self._sizes[parent] = self._sizes.get(parent, 0) + len(item)

    async def send(self) -> None:
        for subject, items in self._grouped.items():
            if items:
                await self.publish(subject, join_batches(items))
        self._grouped.clear()
        self._sizes.clear()
