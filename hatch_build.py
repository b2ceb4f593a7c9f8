"""The wheel with the engine's and the ledger's cores compiled (the image is built so).

A hatchling build hook, off by default: ``HATCH_BUILD_HOOK_ENABLE_CUSTOM=true`` turns
it on, as the Dockerfile's build stage does. It compiles the modules that
``[tool.tradeplane] native-modules`` lists with mypyc, in a copy of the engine's
sources, and puts the extension modules into the wheel beside the ``.py`` files they
stand for (Python imports an extension module in preference to its source), with
mypyc's shared library at the wheel's root; the wheel is then tagged for this Python
and platform. Without a C compiler the build fails: an image must not fall back to
pure Python silently. ``make native`` compiles the same modules in place for a
checkout (``scripts/build_native.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def native_modules(root: Path) -> list[str]:
    """The modules to compile, relative to ``engine/``, as pyproject.toml lists them."""
    with (root / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["tradeplane"]["native-modules"]
    return modules


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        work = Path(tempfile.mkdtemp(prefix="tradeplane-native-"))
        self._work = work
        shutil.copytree(root / "engine" / "tradeplane_engine", work / "tradeplane_engine",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        result = subprocess.run([sys.executable, "-m", "mypyc", *native_modules(root)],
                                cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError("mypyc failed:\n" + result.stdout[-4000:] + result.stderr[-4000:])
        extensions = [path for pattern in ("*.so", "*.pyd") for path in work.rglob(pattern)
                      if "build" not in path.relative_to(work).parts]
        for path in extensions:
            build_data["force_include"][str(path)] = path.relative_to(work).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
