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

_TERMINAL = pytest.StashKey[int]()
"""A copy of the terminal's stderr, taken while pytest is not capturing it."""


def pytest_configure(config: pytest.Config) -> None:
    # pytest calls this outside its capture; during a test, fd 2 is its capture file.
    config.stash[_TERMINAL] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    os.close(config.stash[_TERMINAL])


WATCHDOG_SECONDS = float(os.environ.get("ENGINE_TEST_WATCHDOG_SECONDS", "900"))


@pytest.fixture(autouse=True)
def watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    # The fd 2 a test sees is pytest's capture file, and what goes there is lost when the
    # process exits: the traceback goes to the terminal.
    terminal = request.config.stash[_TERMINAL]
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=terminal)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
