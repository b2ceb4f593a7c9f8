"""``helm test`` end to end: the chart's test hook trades on a real exchange.

Helm (helm-sdkpy, memory driver) installs the chart into the emulated API server and
runs its test hooks: a throw-away Market and a pod. The operator runs in-process and
turns the Market into a StatefulSet; ``Kubelet`` runs its engines; a gateway serves
orders; ``PodRunner`` stands in for the kubelet of the test pod: it mounts the pod's Secret
volumes (the items it names, with their modes, from the Secrets in the API server) in a
directory of its own, runs the pod's command (``tradeplane selftest ...``) as a process
with the pod's environment (paths under a mount pointed at that directory), and reports
its exit as the pod's phase, which is what Helm waits for. It runs the chart's ledger
StatefulSet's pods the same way (``tradeplane ledger ...`` with ``$(POD_NAME)``
expanded), so the test pod funds its accounts through the ledger the chart runs, and the
gateway funds their orders through it.

NATS runs with the real accounts and permissions (docs/security.md): the operator, the
engines and the gateway connect as themselves, and the test pod with the admin
credentials it mounts from the Secret ``tradeplane-nats`` (the operator's test world
makes it from the server's own secrets), so those credentials are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chart.test_chart import CHART, ROOT, documents, helm, validate
from tests.operator_.harness import (
    CREDENTIALS_SECRET,
    Kubelet,
    World,
    mount_secrets,
    operator_world,
)
from tests.support.exchange import SETTINGS, run
from tradeplane_engine.service.lease import leases_bucket
from tradeplane_engine.streams import markets_bucket
from tradeplane_gateway.serve import run_gateway
from tradeplane_operator.kube import Resource

PODS = Resource("", "v1", "pods")
JOBS = Resource("batch", "v1", "jobs")
RESTART_BACK_OFF = 1.0
"""Seconds before a failed Job container runs again (the kubelet's first back-off is 10)."""


@dataclass
class PodRunner:
    world: World
    root: Path
    """Where the pods' volumes are mounted."""
    outputs: dict[str, str] = field(default_factory=dict)
    mounted: dict[str, list[str]] = field(default_factory=dict)
    """Each pod's mounted files, as the pod sees them."""
    _task: asyncio.Task[None] | None = None
    _pods: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> PodRunner:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        for task in [self._task, *self._pods]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        started: set[str] = set()
        while True:
            for name, pod in self.world.cluster.objects("pods").items():
                uid = pod["metadata"]["uid"]
                if uid not in started:
                    started.add(uid)
                    self._pods.append(asyncio.create_task(self._run(name, pod)))
            for name, sts in self.world.cluster.objects("statefulsets").items():
                if sts["metadata"]["labels"].get("app.kubernetes.io/component") != "ledger":
                    continue
                for ordinal in range(sts["spec"]["replicas"]):
                    pod_name = f"{name}-{ordinal}"
                    if pod_name not in started:
                        started.add(pod_name)
                        self._pods.append(asyncio.create_task(self._run(
                            pod_name, {"metadata": {"name": pod_name},
                                       "spec": sts["spec"]["template"]["spec"]},
                            phase=False)))
            for name, job in self.world.cluster.objects("jobs").items():
                uid = job["metadata"]["uid"]
                if uid not in started:
                    started.add(uid)
                    self._pods.append(asyncio.create_task(self._run_job(name, job)))
            await asyncio.sleep(0.1)

    async def _run(self, name: str, pod: dict[str, Any], *, phase: bool = True) -> None:
        code, output = await self._container(name, pod["spec"], pod["spec"]["containers"][0])
        self.outputs[name] = output
        if phase:
            await self.world.kube.patch(PODS, "default", name, {"status": {
                "phase": "Succeeded" if code == 0 else "Failed"}})

    async def _run_job(self, name: str, job: dict[str, Any]) -> None:
        """What the Job controller and a kubelet do with a Job of ``restartPolicy:
        OnFailure``: every container run, each restarted when it fails, up to the
        Job's ``backoffLimit`` restarts in all; then the Job's condition."""
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "OnFailure"
        restarts = job["spec"]["backoffLimit"]

        async def until_done(container: dict[str, Any]) -> bool:
            nonlocal restarts
            while True:
                code, output = await self._container(name, spec, container)
                self.outputs[f"{name}/{container['name']}"] = output
                if code == 0:
                    return True
                if restarts == 0:
                    return False
                restarts -= 1
                await asyncio.sleep(RESTART_BACK_OFF)

        done = await asyncio.gather(*(until_done(container)
                                      for container in spec["containers"]))
        condition = "Complete" if all(done) else "Failed"
        await self.world.kube.patch(JOBS, "default", name, {"status": {
            "conditions": [{"type": condition, "status": "True"}],
            "succeeded" if all(done) else "failed": 1}})

    async def _container(self, name: str, spec: dict[str, Any],
                         container: dict[str, Any]) -> tuple[int, str]:
        """Run one container of a pod (``name``) as a ``tradeplane`` process: its exit
        code and output. Its Secret volumes mounted, ``$(VAR)`` in its arguments
        expanded, ``metadata.name`` given where a variable asks for it."""
        mounted = mount_secrets(self.world.cluster, spec, self.root / name / container["name"])
        if mounted.files:
            self.mounted[name] = mounted.files
        env = mounted.environment(container)
        fields = {"metadata.name": name}
        env.update({item["name"]: fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
                    for item in container.get("env", [])
                    if "fieldRef" in item.get("valueFrom", {})})
        args = [re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], arg)
                for arg in container["args"]]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tradeplane.cli", *args,
            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
                str(ROOT / part) for part in ("src", "engine", "gateway", "operator"))},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            output, _ = await process.communicate()
        finally:
            if process.returncode is None:  # a service, stopped with the test
                process.terminate()
                await process.wait()
        assert process.returncode is not None
        return process.returncode, output.decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


ASSETS: dict[str, dict[str, int]] = {
    "assets defined by the selftest": {},
    "assets defined by the hook Job": {"TEST": 4, "USDT": 6},
}
"""``ledger.assets``: none, so the selftest defines the market's assets itself; or given,
so the chart's post-install Job defines them (with other decimals than the selftest
would choose) before the test runs."""


@pytest.mark.parametrize("assets", ASSETS.values(), ids=ASSETS.keys())
def test_helm_test_places_and_crosses_an_order(tmp_path: Path, assets: dict[str, int]) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world), \
                PodRunner(world, tmp_path / "volumes") as pods:
            world.cluster.emulator.openapi()
            assert world.cluster.get("secrets", CREDENTIALS_SECRET) is not None
            await markets_bucket(world.nc.jetstream(), SETTINGS)
            # The leases bucket before the engines (in memory, in-process) and the ledger
            # (on file, a process) race to make it with different storage.
            await leases_bucket(world.nc.jetstream(), 1, memory=True)
            started = asyncio.Event()
            gateway = asyncio.create_task(run_gateway(
                world.nats_url, started, access=world.server.access("gateway"),
                ledger_shards=1))
            try:
                await asyncio.wait_for(started.wait(), 10)
                result = await helm({
                    "install": True, "test": True, "release": "tp", "chart": str(CHART),
                    "kubeconfig": str(world.cluster.kubeconfig), "namespace": "default",
                    "values": {"nats": {"url": world.nats_url,
                                        "credentials": {"existingSecret": CREDENTIALS_SECRET}},
                               "tests": {"market": "helm-test-usdt"},
                               # One ledger pod: two on this one machine would share
                               # the health port.
                               "ledger": {"replicas": 1, "healthPort": _free_port(),
                                          "assets": assets}}},
                    tmp_path)
            finally:
                gateway.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gateway
            output = "".join(pods.outputs.values())
            assert result.get("status") == "deployed", (result.get("error"), output)
            assert result["test"] == "passed", (result["test"], output)
            test_output = pods.outputs["tp-tradeplane-test-trade"]
            assert "ok: one trade on helm-test-usdt" in test_output
            # Funded through the chart's ledger: the assets defined, the accounts credited.
            if assets:
                assert "defined" not in test_output
                for asset in assets:
                    assert "shard 0: applied" in pods.outputs[
                        f"tp-tradeplane-ledger-assets/define-{asset.lower()}"]
            else:
                assert "defined USDT with 8 decimals in shard 0" in test_output
            assert "deposited 300 USDT for selftest-taker-" in test_output
            # Each pod read its own credentials, and only them, from the mounted file.
            assert pods.mounted == {
                "tp-tradeplane-test-trade": ["/etc/tradeplane/credentials/admin.json"],
                "tp-tradeplane-ledger-0": ["/etc/tradeplane/credentials/ledger.json"],
                **({"tp-tradeplane-ledger-assets": ["/etc/tradeplane/credentials/admin.json"]}
                   if assets else {})}
            # The hook's Market was a real one: the operator made its engines.
            assert world.cluster.get("statefulsets", "helm-test-usdt-engine") is not None
            jobs = [obj for obj in documents(result) if obj["kind"] == "Job"]
            assert len(jobs) == (1 if assets else 0)
            for job in jobs:
                assert validate(job) == 2
    run(scenario(), timeout=180)
