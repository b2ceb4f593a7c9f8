"""The engine and ledger cores stay pure: no floats anywhere in them (imports are held
by import-linter).

Money is integers inside: a float literal, a ``float`` name or a true division in
the core would be a way for binary rounding to reach a price or a quantity.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tradeplane_engine.core
import tradeplane_engine.ledger

CORE = Path(tradeplane_engine.core.__file__).parent
LEDGER = Path(tradeplane_engine.ledger.__file__).parent
MODULES = sorted([*CORE.glob("*.py"), *LEDGER.glob("*.py")])


def float_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            found.append(f"line {node.lineno}: float literal {node.value!r}")
        elif isinstance(node, ast.Name) and node.id == "float":
            found.append(f"line {node.lineno}: the name float")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            found.append(f"line {node.lineno}: true division")
    return found


def test_the_core_has_modules_to_check() -> None:
    assert {path.name for path in MODULES} >= {"matching.py", "book.py", "market.py",
                                               "state.py", "amounts.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_no_floats_in_the_core(path: Path) -> None:
    assert float_uses(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    ["x = 0.5", "y = float(3)", "z = a / b", "a /= 2"],
)
def test_the_float_check_catches_floats(source: str) -> None:
    assert float_uses(source)
