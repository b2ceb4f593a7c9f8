"""Test-session settings shared by every test directory.

Hypothesis runs derandomized and without an example database under the default
``ci`` profile, so every run (locally and in CI) tries the same examples and a
failure is reproducible from the test alone. ``HYPOTHESIS_PROFILE=dev`` tries more
examples, with randomness, for a deeper local search.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from tradeplane.postgres import PostgresServer

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=2_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_database_numbers = itertools.count(1)


def _stale_extensions() -> list[str]:
    """Compiled engine and ledger modules older than their sources (``make native``
    builds them in place).

    Python imports an extension module in preference to the ``.py`` beside it, so a
    run after editing a source without rebuilding would test the old code.
    """
    import tradeplane_engine.core
    import tradeplane_engine.ledger

    stale = []
    for package in (tradeplane_engine.core, tradeplane_engine.ledger):
        directory = Path(str(package.__file__)).parent
        for extension in [*directory.glob("*.so"), *directory.glob("*.pyd")]:
            source = directory / (extension.name.split(".", 1)[0] + ".py")
            if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
                stale.append(f"{directory.name}/{source.name}")
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = _stale_extensions()
    if stale:
        pytest.exit(
            f"the compiled engine or ledger core is older than {', '.join(stale)}: run "
            "`make native` (or `make test`), or `python scripts/build_native.py --clean` to "
            "test pure Python",
            returncode=2,
        )


# -- a real PostgreSQL for the tests that need one --------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, stopped at the end (and with this process)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test; its DSN."""
    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50] + \
        f"_{next(_database_numbers)}"
    admin = postgres_server.dsn.rsplit("/", 1)[0] + "/postgres"

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    try:
        yield postgres_server.dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
