"""The operator's errors, and how each becomes kopf's retry or give-up.

    OperatorError
    ├── RetryError           try again after ``delay`` seconds (waiting for something)
    ├── InvalidMarketError   the Market cannot be made as written; retrying will not help
    │   ├── ImageNotAllowedError   its engine image is outside the image policy
    │   └── NameTakenError         a Market of that name runs in another namespace
    ├── KubeError            the API server refused a call (kube.py); by HTTP status
    ├── LeadershipLostError  this replica no longer holds the Lease (leadership.py)
    └── ExchangeError        the exchange could not do what was asked (exchange.py; NATS)
        ├── UnansweredError  nobody answered in time
        └── RefusedError     an engine or recorder answered with an error

plus what the libraries raise: network errors, nats-py's, and pydantic's
``ValidationError`` (a spec the CRD should have refused).
``to_kopf`` is the one mapping; handlers call nothing else for errors.
"""

from __future__ import annotations

import asyncio

import aiohttp
import kopf
import nats.errors
import pydantic


class OperatorError(Exception):
    pass


class RetryError(OperatorError):
    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class InvalidMarketError(OperatorError):
    """``reason`` is the ``Accepted`` condition's and the Warning Event's."""

    reason = "InvalidMarket"


class ImageNotAllowedError(InvalidMarketError):
    reason = "ImageNotAllowed"


class NameTakenError(InvalidMarketError):
    reason = "NameTaken"


class KubeError(OperatorError):
    """An API call that failed, with what the API server said."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ExchangeError(OperatorError):
    """The exchange could not do what the operator asked (NATS down, no engine...)."""


class UnansweredError(ExchangeError):
    """Nobody answered a request (no leader, no recorder) in time."""


class RefusedError(ExchangeError):
    """An engine or recorder answered with an error."""


def to_kopf(exc: BaseException) -> kopf.TemporaryError | kopf.PermanentError | None:
    """kopf's error for an exception, or None for one that is a bug (kopf retries those
    with its default back-off and logs the traceback)."""
    if isinstance(exc, RetryError):
        return kopf.TemporaryError(str(exc), delay=exc.delay)
    if isinstance(exc, InvalidMarketError | pydantic.ValidationError):
        return kopf.PermanentError(str(exc))
    if isinstance(exc, KubeError):
        if exc.status in (400, 422):
            return kopf.PermanentError(f"the API server refused a child: {exc}")
        if exc.status in (401, 403):
            return kopf.TemporaryError(f"not allowed (check the operator's RBAC): {exc}",
                                       delay=30)
        if exc.status == 409:
            return kopf.TemporaryError(f"conflict, trying again: {exc}", delay=1)
        return kopf.TemporaryError(f"API server: {exc}", delay=5)
    if isinstance(exc, ExchangeError | nats.errors.Error):
        return kopf.TemporaryError(f"NATS: {exc}", delay=5)
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return kopf.TemporaryError(f"connection: {exc}", delay=5)
    return None
