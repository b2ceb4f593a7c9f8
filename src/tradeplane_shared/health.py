"""Kubernetes probes and Prometheus' scrape on one small HTTP server, for every process.

The engine serves ``/livez``, ``/readyz`` and ``/metrics`` on its health port
(``tradeplane_engine.service.health`` says when an engine is ready); the gateway, the
recorder and the auth service serve the same three paths on their ``--metrics-port``,
ready once their NATS connections are connected and the service has started
(``ServiceHealth``). The HTTP plumbing is here, outside the engine, because the gateway
may import nothing of the engine service (the import contracts in pyproject.toml).

A few lines on ``asyncio.start_server`` instead of an HTTP library: three fixed
answers, one request per connection, nothing for a dependency to add. The server runs
on the process's event loop, so an answer to ``/livez`` at all proves the loop turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from tradeplane_shared.metrics import exposition

DEFAULT_HOST = "0.0.0.0"
"""Every interface: the kubelet probes the pod's address, not its loopback."""

READ_TIMEOUT = 5.0
"""Seconds a client has to send its request: a silent connection is not kept open."""

MAX_HEADERS = 100

TEXT = "text/plain; charset=utf-8"

type Request = tuple[str, str]
"""A request's method and path (without its query)."""
type Answer = tuple[HTTPStatus, bytes, str]
"""A response's status, body and content type."""


class Connection(Protocol):
    """What readiness needs of a NATS connection (``nats.aio.client.Client``)."""

    @property
    def is_connected(self) -> bool: ...


class ServiceHealth:
    """A service's readiness: every NATS connection it watches is connected, and the
    service said it started (it serves, or follows what it should). A reconnecting
    connection makes the pod unready until it is back, so no traffic counts on a pod
    that cannot reach NATS; liveness does not depend on it (a restart would not help)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self._connections: list[tuple[str, Connection]] = []

    def watch(self, name: str, connection: Connection) -> None:
        """Count ``connection`` (called ``name`` in the answer) in readiness."""
        self._connections.append((name, connection))

    def waiting_for(self) -> list[str]:
        """What keeps the service from being ready; empty when it is ready."""
        waiting = [f"{name} not connected" for name, connection in self._connections
                   if not connection.is_connected]
        if not self._connections:
            waiting.append("not connected yet")
        if not self.started.is_set():
            waiting.append("not started")
        return waiting

    def answer(self, request: Request | None) -> Answer:
        """``/livez``, ``/readyz`` and ``/metrics`` for this service."""
        if request == ("GET", "/readyz"):
            waiting = self.waiting_for()
            if waiting:
                return text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready: " + ", ".join(waiting))
            return text(HTTPStatus.OK, "ready")
        return common_answer(request)


async def start_service_health(host: str, port: int, health: ServiceHealth) -> asyncio.Server:
    """Serve ``health``'s probes and the metrics on ``host:port``."""
    return await serve_http(host, port, health.answer)


def common_answer(request: Request | None) -> Answer:
    """The answers every process gives alike: malformed requests, ``/livez`` (it answers
    at all, so its event loop turns), ``/metrics``, and not found."""
    if request is None:
        return text(HTTPStatus.BAD_REQUEST, "malformed request")
    if request == ("GET", "/livez"):
        return text(HTTPStatus.OK, "ok")
    if request == ("GET", "/metrics"):
        body, content_type = exposition()
        return HTTPStatus.OK, body, content_type
    return text(HTTPStatus.NOT_FOUND, "not found")


async def serve_http(host: str, port: int,
                     answer: Callable[[Request | None], Answer]) -> asyncio.Server:
    """Answer one request per connection with ``answer`` on ``host:port`` (port 0: any
    free port, see ``bound_port``) until the server is closed."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await _read_request(reader)
            writer.write(_response(*answer(request)))
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


def text(status: HTTPStatus, body: str) -> Answer:
    return status, f"{body}\n".encode(), TEXT


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
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


def _response(status: HTTPStatus, content: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(content)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + content
