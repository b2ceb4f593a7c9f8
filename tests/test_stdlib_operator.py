"""The repository's ``operator/`` source root must never shadow the standard library.

``operator/`` holds the ``tradeplane_operator`` package: it is a source root, not a
package. Were it to gain an ``__init__.py``, ``import operator`` run from the repository
root (where the current directory leads ``sys.path``) would import it instead of the
standard library module that ``collections``, ``dataclasses`` and most libraries use.
"""

from __future__ import annotations

import operator
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: this file is ``tests/test_stdlib_operator.py``."""


def _in_stdlib(path: str) -> bool:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    return Path(path).resolve().is_relative_to(stdlib)


def test_operator_is_the_standard_library_module() -> None:
    assert operator.__file__ is not None
    assert _in_stdlib(operator.__file__), operator.__file__
    assert operator.itemgetter(1)(("a", "b")) == "b"
    assert operator.attrgetter("real")(3) == 3


def test_the_operator_source_root_is_not_a_package() -> None:
    source_root = ROOT / "operator"
    assert (ROOT / "pyproject.toml").is_file(), "ROOT must be the repository root"
    assert source_root.is_dir()
    assert sorted(source_root.glob("__init__.*")) == []


def test_import_operator_from_the_repository_root_finds_the_standard_library() -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert _in_stdlib(found), found
