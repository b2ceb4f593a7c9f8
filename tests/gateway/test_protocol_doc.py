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


def test_protocol_examples_run_against_a_live_exchange(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "markets" / "sol-usdt.yaml").read_text())
    sol = definition_from_manifest(manifest)

    async def scenario() -> None:
        async with local_exchange(tmp_path, sol) as exchange:
            os.environ["NATS_URL"] = exchange.url
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
                if "nc" in namespace:
                    await namespace["nc"].close()

    run(scenario())
