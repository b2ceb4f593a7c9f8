"""A watchdog for the engine tests: a test that runs far too long ends the run loudly.

A matching loop that never ends cannot fail an assertion; it would hang the run until
CI gives up, with no clue where. Instead, a test still running after
``ENGINE_TEST_WATCHDOG_SECONDS`` (default 900: room for hypothesis to shrink a failing
example) makes the process print every thread's traceback and exit with status 1. It
works inside compiled engine code too, where no signal handler would ever run.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Iterator

import pytest


def _terminal_fd(config: pytest.Config) -> int:
    """pytest keeps the terminal's stderr here; during a test, fd 2 is its capture file."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:  # pragma: no cover - a pytest that moved it: fall back to fd 2
        return 2
    return config.stash.get(fault_handler_stderr_fd_key, 2)


WATCHDOG_SECONDS = float(os.environ.get("ENGINE_TEST_WATCHDOG_SECONDS", "900"))


@pytest.fixture(autouse=True)
def watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    # pytest's faulthandler plugin keeps a copy of the terminal's stderr; the fd 2 a test
    # sees is pytest's capture file, and what goes there is lost when the process exits.
    terminal = _terminal_fd(request.config)
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=terminal)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
