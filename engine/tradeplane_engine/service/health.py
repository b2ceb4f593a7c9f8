"""The engine's health endpoint: HTTP probes for the StatefulSet the operator creates,
and the process's Prometheus metrics.

The kubelet asks three questions over plain HTTP. ``GET /livez``: is the process alive?
If it answers at all, its event loop runs; ``200 ok`` unless a market it runs is wedged
(``Watchdog.wedged``: its command loop has not turned for ``WEDGED_AFTER`` seconds
while connected to NATS, or its service failed while the process lives on), then ``503``
names the market and why: a restart is what a wedged replica needs, and its standby
takes the lead meanwhile.
``GET /readyz``: may traffic count on this pod? Only once every market the process runs
has caught up with its command stream (``MarketService.ready``); until then ``503``
names the markets still catching up. A process whose markets are not running yet (their
definitions still awaited) is not ready either. The operator's startup probe asks
``/readyz`` too, so liveness is not asked while a replica restores and replays.

``GET /metrics`` is Prometheus' scrape (docs/observability.md): on the same port, so an
engine pod exposes one port (``health``) for probes and metrics alike, and the scrape
runs on the event loop, where the services' state is read between two batches.

The HTTP plumbing, and the answers every process gives alike, are
``tradeplane_shared.health``'s; this module says only when an engine is ready.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from tradeplane_shared.health import (
    DEFAULT_HOST,
    Answer,
    Request,
    bound_port,
    common_answer,
    serve_http,
    text,
)

if TYPE_CHECKING:
    import asyncio


class Probed(Protocol):
    """What the probes ask of a replica the process runs: a market's engine service or
    a ledger shard's."""

    label: str

    @property
    def ready(self) -> asyncio.Event: ...

    def wedged(self) -> str | None: ...

__all__ = ["DEFAULT_HOST", "bound_port", "start_health_server"]


async def start_health_server(host: str, port: int,
                              services: Sequence[Probed]) -> asyncio.Server:
    """Serve ``/livez``, ``/readyz`` and ``/metrics`` on ``host:port`` (port 0: any free
    port, see ``bound_port``) until the server is closed. ``services`` is read at each
    request, so a list filled in later (markets still being defined) is seen as it grows."""
    return await serve_http(host, port, lambda request: _answer(request, services))


def _answer(request: Request | None, services: Sequence[Probed]) -> Answer:
    """Ready once every market the process runs has caught up; alive unless one of them
    is wedged; the rest as every process."""
    if request == ("GET", "/livez"):
        wedged = [reason for service in services if (reason := service.wedged()) is not None]
        if wedged:
            return text(HTTPStatus.SERVICE_UNAVAILABLE, "wedged: " + "; ".join(wedged))
    if request == ("GET", "/readyz"):
        waiting = [service.label for service in services if not service.ready.is_set()]
        if services and not waiting:
            return text(HTTPStatus.OK, "ready")
        return text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready: " + (
            ", ".join(waiting) or "no markets running yet"))
    return common_answer(request)
