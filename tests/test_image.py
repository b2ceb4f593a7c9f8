"""The container image, without a Docker engine: what its build stage builds from.

The Dockerfile copies pyproject.toml, README.md, the wheel's build hook and the four
source roots (and .dockerignore admits nothing else), then builds a wheel with the
engine's and the ledger's cores compiled. These tests build the wheel from exactly
those files, as the first stage does, and check that it holds every package and the
``tradeplane`` entry point the image runs, and, built as the image's is, the compiled
cores, which give the same states as the pure ones. The commands themselves
(``tradeplane operator | engine | gateway | recorder | selftest``) are run as processes
by other tests. hadolint checks the Dockerfile in ``make lint``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ["pyproject.toml", "README.md", "hatch_build.py", "src", "engine", "gateway",
           "operator"]


def test_the_dockerignore_admits_only_the_build_context() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    admitted = sorted(line[1:].rstrip("/") for line in lines if line.startswith("!"))
    assert admitted == sorted(CONTEXT)
    copied = sorted(part for line in (ROOT / "Dockerfile").read_text().splitlines()
                    if line.startswith("COPY ") and "--from" not in line
                    for part in line.split()[1:-1])
    assert copied == sorted(CONTEXT)


def _wheel(tmp_path: Path, *, native: bool) -> Path:
    """The wheel built from a copy of the build context, with the compiling hook on (as
    the image's build stage turns it on) or off."""
    context = tmp_path / "context"
    context.mkdir()
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.pyd", "*.c", "build"))
        else:
            shutil.copy(source, context / name)
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("HATCH_BUILD_HOOK")}
    if native:
        environment["HATCH_BUILD_HOOK_ENABLE_CUSTOM"] = "true"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheels"), str(context)], check=True,
                   timeout=600, env=environment)
    [wheel] = (tmp_path / "wheels").glob("tradeplane-*.whl")
    return wheel


def test_the_wheel_built_from_the_context_has_everything(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, native=False)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith("entry_points.txt"))
    for module in ("tradeplane/cli.py", "tradeplane/selftest.py", "tradeplane_shared/telemetry.py",
                   "tradeplane_engine/service/market.py", "tradeplane_engine/core/book.py",
                   "tradeplane_engine/store/migrations/0001_journal_orders_trades.sql",
                   "tradeplane_gateway/service.py", "tradeplane_operator/handlers.py"):
        assert module in names, module
    assert "tradeplane = tradeplane.cli:main" in entry_points
    assert not any(name.endswith(".so") for name in names)
    assert wheel.name.endswith("-py3-none-any.whl")


STATES = """
import json, sys
import tradeplane_engine.core.matching as matching
import tradeplane_engine.ledger.state as state
from tradeplane_engine.core import Engine
from tradeplane_engine.ledger import DefineAsset, Deposit, Ledger
from tradeplane_engine.workload import SPEC, generate, to_commands

engine = Engine(SPEC)
for command in to_commands(generate(3_000, 7)):
    engine.apply(command)
ledger = Ledger()
ledger.apply(DefineAsset(1, 1, asset="USDT", decimals=6))
ledger.apply(Deposit(2, 2, transfer_id="t", account="a", asset="USDT", amount=10**9))
print(json.dumps({"files": [matching.__file__, state.__file__],
                  "engine": engine.state_hash(), "ledger": ledger.state_hash()}))
"""
"""What a process that imports the wheel's modules computes, and from which files."""


def test_the_image_wheel_holds_the_compiled_cores(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, native=True)
    assert "-cp312-cp312-" in wheel.name  # tagged for the Python and platform it ran on
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    compiled = {name.split(".", 1)[0] for name in names if name.endswith((".so", ".pyd"))}
    assert compiled >= {"tradeplane_engine/core/book", "tradeplane_engine/core/matching",
                        "tradeplane_engine/ledger/fees", "tradeplane_engine/ledger/state"}
    assert any("__mypyc" in name and "/" not in name for name in names)  # mypyc's library
    installed = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(installed), str(wheel)], check=True, timeout=300)
    # The installed wheel first on the path (its dependencies come from this environment).
    found = json.loads(subprocess.run(
        [sys.executable, "-c", STATES], check=True, capture_output=True, text=True,
        timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}).stdout)
    assert all(Path(file).is_relative_to(installed) and file.endswith(".so")
               for file in found["files"]), found["files"]
    # The same states as this process computes (compiled by `make native`, or not).
    mine = json.loads(subprocess.run(
        [sys.executable, "-c", STATES], check=True, capture_output=True, text=True,
        timeout=120, cwd=tmp_path).stdout)
    assert (found["engine"], found["ledger"]) == (mine["engine"], mine["ledger"])
