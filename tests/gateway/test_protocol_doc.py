"""docs/protocol.md is true: its Python examples, plain nats-py, run in order against a
live exchange defined by the example Market manifest, and assert what the page says."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.exchange import local_exchange, run
from tradeplane_engine.store.database import open_database
from tradeplane_engine.wire import definition_from_manifest

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PROTOCOL.read_text(), flags=re.DOTALL)


def test_the_page_has_examples_for_every_request() -> None:
    text = "".join(examples())
    for verb in ("place", "cancelAll", "replace", "status"):
        assert f'"{verb}"' in text
    assert "tp.md.sol-usdt.book.snapshot" in text
    assert "tp.acct." in text
    assert "account.balances" in text


def test_protocol_examples_run_against_a_live_exchange(tmp_path: Path, database: str) -> None:
    """As traders do: real accounts, issued secrets, the auth service, their permissions."""
    manifest = yaml.safe_load((ROOT / "examples" / "markets" / "sol-usdt.yaml").read_text())
    sol = definition_from_manifest(manifest)
    logins = tmp_path / "logins"

    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, sol, accounts_pool=pool, ledger_shards=1,
                                      assets=ASSETS) as exchange:
                for account in ACCOUNTS:
                    await exchange.issue(pool, account, logins)
                    # Balances are on, as with `tradeplane up`: the administrator funds
                    # each trader (tradeplane deposit).
                    await exchange.fund(account, SOL=1_000 * 10**8, USDT=100_000 * 10**8)
                await run_examples(exchange.server.url, logins)
        finally:
            await pool.close()

    run(scenario())


ACCOUNTS = ("alice", "bob", "carol", "dave")
"""Every account the examples trade as."""
ASSETS = {"SOL": 8, "USDT": 8}


async def run_examples(url: str, logins: Path) -> None:
    """Each example in order, in one namespace, as pasted into ``python -m asyncio``."""
    os.environ["NATS_URL"] = url
    os.environ["TP_LOGINS"] = str(logins)
    namespace: dict[str, Any] = {}
    try:
        for number, source in enumerate(examples(), start=1):
            code = compile(source, f"{PROTOCOL.name} example {number}", "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if result is not None:
                await result
    finally:
        os.environ.pop("NATS_URL", None)
        os.environ.pop("TP_LOGINS", None)
        for nc in namespace.get("traders", {}).values():
            await nc.close()
