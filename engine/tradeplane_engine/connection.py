"""NATS connections as every tradeplane service makes them, and what counts as a
passing NATS failure.

A service's connection retries for ever, so the service outlives a NATS restart. While
NATS is away, nats-py reports each failed reconnect (four a second) to the error
callback, with a traceback by default; here each distinct failure is one log line at
most every ``ERROR_LOG_EVERY`` seconds, and losing and regaining the connection is one
line each. Reconnects are counted in ``tradeplane_nats_reconnects_total{component}``.

``NATS_ERRORS`` is what a background task (the lease, the command feed, a status
reporter) survives: it logs, counts, and tries again. Anything else is a defect, and
the task's failure takes its process down so that it is restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client

from tradeplane_engine.access import Access
from tradeplane_shared.metrics import reconnected

log = logging.getLogger(__name__)

NATS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, TimeoutError, OSError)
"""NATS being away or slow: timeouts (whose outcome is unknown), lost connections, and
JetStream's API errors (``nats.js.errors.Error`` is a ``nats.errors.Error``)."""

ERROR_LOG_EVERY = 10.0
"""Seconds between two log lines of the same connection error."""


def server_urls(servers: str | list[str]) -> list[str]:
    """``nats://a:4222,nats://b:4222`` as a list (nats-py takes one server per string), so
    that ``--nats`` may name every node of a NATS cluster: a service that (re)starts while
    one node is down connects to another."""
    if isinstance(servers, list):
        return servers
    return [url.strip() for url in servers.split(",") if url.strip()]


def error_logger(component: str) -> Callable[[Exception], Awaitable[None]]:
    """An ``error_cb`` for ``nats.connect``: one line per distinct error, at most every
    ``ERROR_LOG_EVERY`` seconds."""
    logged: dict[str, float] = {}

    async def on_error(error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        if now - logged.get(text, -ERROR_LOG_EVERY) >= ERROR_LOG_EVERY:
            logged[text] = now
            log.warning("%s: NATS connection: %s", component, text)

    return on_error


async def connect(servers: str, name: str, component: str,
                  access: Access | None = None) -> Client:
    """A service's connection: it retries for ever and says so in one line each time.
    ``access`` holds its credentials (docs/security.md)."""
    count_reconnect = reconnected(component)

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS", component)

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", component)
        await count_reconnect()

    return await nats.connect(
        server_urls(servers), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
        connect_timeout=2, allow_reconnect=True, pending_size=64 * 1024 * 1024,
        error_cb=error_logger(component), disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect, **(access or Access()).options(),
    )
