"""One Helm job (lint, install, test, uninstall) with the real Helm library (helm-sdkpy),
in a process of its own.

Helm's Go runtime reads ``HELM_DRIVER`` from the environment the process started
with, so the tests run each job as ``HELM_DRIVER=memory python -m tests.chart.helm_job``:
releases live in memory, and nothing but the chart's own objects reaches the API server.
The job comes as JSON on the command line; the result goes to stdout as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import helm_sdkpy as helm


async def run(job: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get("HELM_DRIVER") != "memory":
        raise SystemExit("HELM_DRIVER=memory must be set when the process starts")
    config = helm.Configuration(namespace=job.get("namespace", "default"),
                                kubeconfig=job.get("kubeconfig"))
    result: dict[str, Any] = {}
    if job.get("lint"):
        result["lint"] = await helm.Lint(config).run(job["chart"])
    if job.get("install"):
        try:
            release = await helm.Install(config).run(
                job["release"], job["chart"], values=job.get("values") or {}, wait=False,
                timeout=60)
        except helm.HelmError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            return result
        result["status"] = release["info"]["status"]
        result["manifest"] = release["manifest"]
        result["hooks"] = [hook["manifest"] for hook in release.get("hooks") or []]
        if job.get("test"):
            try:
                await helm.ReleaseTest(config).run(job["release"])
                result["test"] = "passed"
            except helm.HelmError as exc:
                result["test"] = f"{type(exc).__name__}: {exc}"
        if job.get("uninstall"):
            await helm.Uninstall(config).run(job["release"], wait=False, timeout=60)
            result["uninstalled"] = True
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
