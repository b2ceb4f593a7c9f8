"""The gateway's import contract says what it may import of the engine by listing
everything else: this keeps that list complete as engine modules come and go."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GATEWAY_MAY_IMPORT = {
    "tradeplane_engine",
    "tradeplane_engine.access",
    "tradeplane_engine.connection",
    "tradeplane_engine.core",
    "tradeplane_engine.core.codes",
    "tradeplane_engine.core.commands",
    "tradeplane_engine.core.events",
    "tradeplane_engine.core.market",
    "tradeplane_engine.errors",
    "tradeplane_engine.ledger",
    "tradeplane_engine.ledger.amounts",
    "tradeplane_engine.ledger.commands",
    "tradeplane_engine.ledger.events",
    "tradeplane_engine.ledger.fees",
    "tradeplane_engine.store",
    "tradeplane_engine.store.database",
    "tradeplane_engine.store.migrate",
    "tradeplane_engine.store.migrations",
    "tradeplane_engine.wire",
}
"""The engine modules the gateway may import (and the packages that hold them)."""


def engine_modules() -> set[str]:
    root = ROOT / "engine"
    modules = set()
    for path in (root / "tradeplane_engine").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def gateway_forbidden() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [contract] = [contract for contract in config["tool"]["importlinter"]["contracts"]
                  if contract["source_modules"] == ["tradeplane_gateway"]]
    return list(contract["forbidden_modules"])


def test_the_gateway_contract_names_every_engine_module() -> None:
    forbidden = gateway_forbidden()

    def is_forbidden(module: str) -> bool:
        return any(module == name or module.startswith(f"{name}.") for name in forbidden)

    modules = engine_modules()
    assert not {module for module in modules if is_forbidden(module)} & GATEWAY_MAY_IMPORT
    unlisted = {module for module in modules
                if not is_forbidden(module) and module not in GATEWAY_MAY_IMPORT}
    assert not unlisted, f"list in the gateway's contract or in GATEWAY_MAY_IMPORT: {unlisted}"
    assert all(name in modules for name in forbidden), "a forbidden module no longer exists"
