"""NATS connections as every tradeplane service makes them, and what counts as a
passing NATS failure.

A service's connection retries for ever, so the service outlives a NATS restart. While
NATS is away, nats-py reports each failed reconnect (four a second) to the error
callback, with a traceback by default; here each distinct failure is one log line at
most every ``ERROR_LOG_EVERY`` seconds, and losing and regaining the connection is one
line each. Reconnects are counted in ``tradeplane_nats_reconnects_total{component}``.

Every service's connection is a ``ServiceClient``: nats-py's client, writing and
reading message headers for less, with the same result (tests hold it to nats-py's).

``NATS_ERRORS`` is what a background task (the lease, the command feed, a status
reporter) survives: it logs, counts, and tries again. Anything else is a defect, and
the task's failure takes its process down so that it is restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import _HEADER_KEY_RE, Client
from nats.protocol.command import hpub_cmd

from tradeplane_engine.access import Access
from tradeplane_shared.metrics import reconnected

log = logging.getLogger(__name__)

NATS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, TimeoutError, OSError)
"""NATS being away or slow: timeouts (whose outcome is unknown), lost connections, and
JetStream's API errors (``nats.js.errors.Error`` is a ``nats.errors.Error``)."""

ERROR_LOG_EVERY = 10.0
"""Seconds between two log lines of the same connection error."""


_NAMES_KEPT = 64
"""Header names each cache keeps: the few a service uses. Names past it (only an
untrusted sender would send many) are checked each time, as nats-py does."""

_RECEIVED_NAMES: dict[bytes, str | None] = {}
"""Header names as received, each as nats-py reads it (None: one it skips)."""


class ServiceClient(Client):
    """nats-py's client, writing and reading message headers for a small part of the cost.

    nats-py (2.16) replaces CR and LF in every header value with ``str.translate`` and a
    dictionary, which costs about 5 µs for a 40-character value (each character not in
    the table is a lookup that fails), and checks every header name against a regular
    expression: with three headers, 15 µs of every publish. Here a value is only
    rewritten when it holds a CR or an LF, and a name is checked once (up to
    ``_NAMES_KEPT`` names). What goes on the wire is the same, byte for byte, and a name
    nats-py refuses is refused the same way (``BadHeaderError``).

    Reading a message's headers, nats-py strips, decodes and checks every name for
    whitespace character by character (about 5 µs for three headers); here each name is
    read once that way and then looked up (``_parse_header_lines``, the same headers
    out)."""

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[str, bytes | None] = {}
        """Each header name seen, as it starts its line (None: skipped)."""

    async def _send_publish(self, subject: str, reply: str, payload: bytes,
                            payload_size: int, headers: dict[str, Any] | None) -> None:
        if headers is None:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        names = self._names
        block = bytearray(b"NATS/1.0\r\n")
        for name, value in headers.items():
            try:
                start = names[name]
            except KeyError:
                start = _header_start(name)
                if len(names) < _NAMES_KEPT:
                    names[name] = start
            if start is None:
                continue  # an empty name: nats-py skips it too
            text = value.strip()
            if "\r" in text or "\n" in text:
                text = text.replace("\r", " ").replace("\n", " ")
            block += start
            block += text.encode()
            block += b"\r\n"
        block += b"\r\n"
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, block, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return _parse_header_lines(raw)


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """A header block as nats-py's ``Client._parse_header_lines`` reads it: a line
    without a colon, or whose name is not ASCII or holds whitespace, is skipped; values
    are stripped and decoded, an invalid byte replaced."""
    out: dict[str, str] = {}
    names = _RECEIVED_NAMES
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = names[name]
        except KeyError:
            key = _received_name(name)
            if len(names) < _NAMES_KEPT:
                names[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def _received_name(name: bytes) -> str | None:
    """A received header name as nats-py reads it; None for one it skips (not ASCII, or
    holding whitespace)."""
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(c.isspace() for c in key) else key


def _header_start(name: str) -> bytes | None:
    """``<name>: `` as it goes on the wire; None for a name nats-py skips (empty)."""
    key = name.strip()
    if not key:
        return None
    if not _HEADER_KEY_RE.fullmatch(key):  # nats-py's own check of a name
        raise nats.errors.BadHeaderError(key)
    return key.encode() + b": "


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

    options: dict[str, Any] = {
        "name": name, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.25,
        "connect_timeout": 2, "allow_reconnect": True, "pending_size": 64 * 1024 * 1024,
        "error_cb": error_logger(component), "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect, **(access or Access()).options()}
    nc = ServiceClient()
    await nc.connect(server_urls(servers), **options)
    return nc
