"""Compile the engine's and the ledger's hot modules with mypyc, in place beside their sources.

The modules stay plain, typed Python that runs as it is; compiled, the same code
matches and settles about twice as fast. The extension modules land next to the ``.py``
files (and are ignored by git), so the editable install picks them up. ``--clean``
removes them, leaving pure Python. Where no C compiler or Python headers are at hand,
the build warns and leaves pure Python in place (``--strict`` makes that an error), so
``make test`` still works there, only slower.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
with (ROOT / "pyproject.toml").open("rb") as _file:
    MODULES: list[str] = tomllib.load(_file)["tool"]["tradeplane"]["native-modules"]
"""What to compile, relative to ``engine/`` (the image's wheel holds the same, compiled:
``hatch_build.py``)."""
PACKAGES = [ENGINE / "tradeplane_engine" / "core", ENGINE / "tradeplane_engine" / "ledger"]
"""Where the compiled modules live, with every module they are compiled against."""


def extensions() -> list[Path]:
    return [path for package in PACKAGES for pattern in ("*.so", "*.pyd")
            for path in package.glob(pattern)]


def built_files() -> list[Path]:
    return [*extensions(), *ENGINE.glob("*__mypyc*")]


def clean() -> None:
    for path in built_files():
        path.unlink()
    shutil.rmtree(ENGINE / "build", ignore_errors=True)


def up_to_date() -> bool:
    """Whether every module has an extension built after every source they are compiled
    with last changed."""
    built_extensions = extensions()
    built = {path.name.split(".", 1)[0] for path in built_extensions}
    if not built_extensions or built < {Path(module).stem for module in MODULES}:
        return False
    newest_source = max(path.stat().st_mtime for package in PACKAGES
                        for path in package.glob("*.py"))
    return min(path.stat().st_mtime for path in built_extensions) > newest_source


def main() -> None:
    if "--if-stale" in sys.argv and up_to_date():
        return
    clean()
    if "--clean" in sys.argv:
        return
    result = subprocess.run(
        [sys.executable, "-m", "mypyc", *MODULES], cwd=ENGINE, capture_output=True, text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        clean()
        message = f"build_native: mypyc failed ({result.returncode})"
        if "--strict" in sys.argv:
            sys.exit(message)
        print(f"{message}; the engine and ledger cores run as pure Python (about half "
              "as fast)", file=sys.stderr)
        return
    shutil.rmtree(ENGINE / "build", ignore_errors=True)
    print("build_native: compiled " + ", ".join(MODULES))


if __name__ == "__main__":
    main()
