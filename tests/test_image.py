"""The container image, without a Docker engine: what its build stage builds from.

The Dockerfile copies pyproject.toml, README.md and the four source roots (and
.dockerignore admits nothing else), then builds a wheel. This test builds the wheel
from exactly those files, as the first stage does, and checks that it holds every
package and the ``tradeplane`` entry point the image runs. The commands themselves
(``tradeplane operator | engine | gateway | recorder | selftest``) are run as processes
by other tests. hadolint checks the Dockerfile in ``make lint``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ["pyproject.toml", "README.md", "src", "engine", "gateway", "operator"]


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


def test_the_wheel_built_from_the_context_has_everything(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.pyd", "*.c"))
        else:
            shutil.copy(source, context / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheels"), str(context)], check=True,
                   timeout=300)
    [wheel] = (tmp_path / "wheels").glob("tradeplane-*.whl")
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
