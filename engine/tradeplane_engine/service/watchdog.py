"""Whether a replica's command loop still turns: what ``/livez`` asks of a market's
engine and of a ledger shard alike.

A replica is wedged when its command loop has not turned for ``WEDGED_AFTER`` seconds
while connected to NATS (a batch taken and not applied and published, or the feed not
even waiting), or when its ``run`` failed while the process goes on. An idle replica
is not wedged: its feed waits for commands a heartbeat at a time, and each wait is a
turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client

WEDGED_AFTER = 30.0
"""Seconds the command loop may go without turning (connected to NATS) before the
service is wedged and ``/livez`` fails. A batch of 512 commands is applied in
milliseconds and its events are acknowledged in a few (or sent again after 2 s), and an
idle loop turns every heartbeat (1 s): 30 s is no slow moment but a stuck one. The
kubelet restarts the pod after three failed probes (10 s apart), so a wedged replica is
replaced in about a minute, and its standby leads once its lease has expired."""


class Watchdog:
    """Progress of one replica's command loop; a service class mixes it in."""

    label: str
    """What the probe's answer names: the market, or the ledger shard."""
    nc: Client

    def start_watch(self) -> None:
        self.clock: Callable[[], float] = time.monotonic
        """What progress is timed with (a test may move it on instead of waiting)."""
        self.progressed: float | None = None
        """When the command loop last turned (``clock``); None until it runs."""
        self.in_hand = 0
        """Commands of the batch being applied and published; 0 between batches."""
        self.failure: str | None = None
        """Why ``run`` failed, if it did (a cancellation is no failure)."""

    def wedged(self) -> str | None:
        """Why this service is wedged, for ``/livez``; None when it is not.

        Not while it starts (the startup probe gives it time), nor while NATS is away (a
        restart would not bring NATS back; readiness says so instead)."""
        if self.failure is not None:
            return f"{self.label}: stopped: {self.failure}"
        if self.progressed is None or not self.nc.is_connected:
            return None
        still = self.clock() - self.progressed
        if still <= WEDGED_AFTER:
            return None
        plural = "" if self.in_hand == 1 else "s"
        holding = f" with {self.in_hand} command{plural} in hand" if self.in_hand else ""
        return f"{self.label}: no progress for {still:.0f} s{holding}"

    def turned(self) -> None:
        self.progressed = self.clock()

    async def watched(self, running: Coroutine[Any, Any, None]) -> None:
        """Run the service, remembering why it failed (for ``wedged``)."""
        try:
            await running
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            cause = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
            self.failure = f"{type(cause).__name__}: {cause}"
            raise
