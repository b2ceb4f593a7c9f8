"""The engine's health endpoint: HTTP probes for the StatefulSet the operator creates,
and the process's Prometheus metrics.

The kubelet asks two questions over plain HTTP. ``GET /livez``: is the process alive?
If it answers at all, its event loop runs, so the answer is always ``200 ok``.
``GET /readyz``: may traffic count on this pod? Only once every market the process runs
has caught up with its command stream (``MarketService.ready``); until then ``503``
names the markets still catching up. A process whose markets are not running yet (their
definitions still awaited) is not ready either.

``GET /metrics`` is Prometheus' scrape (docs/observability.md): on the same port, so an
engine pod exposes one port (``health``) for probes and metrics alike, and the scrape
runs on the event loop, where the services' state is read between two batches.

A few lines on ``asyncio.start_server`` instead of an HTTP library: three fixed
answers, one request per connection, nothing for a dependency to add.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from tradeplane_shared.metrics import exposition

if TYPE_CHECKING:
    from tradeplane_engine.service.market import MarketService

DEFAULT_HOST = "0.0.0.0"
"""Every interface: the kubelet probes the pod's address, not its loopback."""

READ_TIMEOUT = 5.0
"""Seconds a client has to send its request: a silent connection is not kept open."""

MAX_HEADERS = 100

TEXT = "text/plain; charset=utf-8"


async def start_health_server(host: str, port: int,
                              services: Sequence[MarketService]) -> asyncio.Server:
    """Serve ``/livez``, ``/readyz`` and ``/metrics`` on ``host:port`` (port 0: any free
    port, see ``bound_port``) until the server is closed. ``services`` is read at each
    request, so a list filled in later (markets still being defined) is seen as it grows."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await _read_request(reader)
            writer.write(_response(*_answer(request, services)))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # the client went away or never asked: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(serve, host, port)


def bound_port(server: asyncio.Server) -> int:
    """The port the server listens on (the one chosen for it when asked for port 0)."""
    return int(server.sockets[0].getsockname()[1])


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """The request's method and path, its headers read and dropped; None if malformed.

    The headers are read, not left unread, because closing a socket with unread input
    resets the connection, and the client may lose the response."""
    try:
        line = await reader.readline()
        for _ in range(MAX_HEADERS):
            if not (await reader.readline()).strip():
                break
        else:
            return None
        parts = line.decode("ascii").split()
    except ValueError:  # not ASCII, or a line longer than the reader's limit
        return None
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def _answer(request: tuple[str, str] | None,
            services: Sequence[MarketService]) -> tuple[HTTPStatus, bytes, str]:
    """The status, body and content type of the answer."""
    if request is None:
        return _text(HTTPStatus.BAD_REQUEST, "malformed request")
    if request == ("GET", "/livez"):
        return _text(HTTPStatus.OK, "ok")
    if request == ("GET", "/readyz"):
        waiting = [service.market for service in services if not service.ready.is_set()]
        if services and not waiting:
            return _text(HTTPStatus.OK, "ready")
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready: " + (
            ", ".join(waiting) or "no markets running yet"))
    if request == ("GET", "/metrics"):
        body, content_type = exposition()
        return HTTPStatus.OK, body, content_type
    return _text(HTTPStatus.NOT_FOUND, "not found")


def _text(status: HTTPStatus, body: str) -> tuple[HTTPStatus, bytes, str]:
    return status, f"{body}\n".encode(), TEXT


def _response(status: HTTPStatus, content: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(content)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + content
