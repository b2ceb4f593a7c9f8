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

from tests.chart.test_chart import CHART, ROOT, helm
from tests.operator_.harness import (
    CREDENTIALS_SECRET,
    Kubelet,
    World,
    mount_secrets,
    operator_world,
)
from tests.support.exchange import SETTINGS, run
from tradeplane_engine.streams import markets_bucket
from tradeplane_gateway.serve import run_gateway
from tradeplane_operator.kube import Resource

PODS = Resource("", "v1", "pods")


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
            await asyncio.sleep(0.1)

    async def _run(self, name: str, pod: dict[str, Any], *, phase: bool = True) -> None:
        container = pod["spec"]["containers"][0]
        mounted = mount_secrets(self.world.cluster, pod["spec"], self.root / name)
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
        self.outputs[name] = output.decode()
        if phase:
            await self.world.kube.patch(PODS, "default", name, {"status": {
                "phase": "Succeeded" if process.returncode == 0 else "Failed"}})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_helm_test_places_and_crosses_an_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world), \
                PodRunner(world, tmp_path / "volumes") as pods:
            world.cluster.emulator.openapi()
            assert world.cluster.get("secrets", CREDENTIALS_SECRET) is not None
            await markets_bucket(world.nc.jetstream(), SETTINGS)
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
                               "ledger": {"replicas": 1, "healthPort": _free_port()}}},
                    tmp_path)
            finally:
                gateway.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gateway
            assert result.get("status") == "deployed", result.get("error")
            output = "".join(pods.outputs.values())
            assert result["test"] == "passed", (result["test"], output)
            assert "ok: one trade on helm-test-usdt" in output
            # Funded through the chart's ledger: the assets defined, the accounts credited.
            assert "defined USDT with 8 decimals in shard 0" in output
            assert "deposited 300 USDT for selftest-taker-" in output
            # Each pod read its own credentials, and only them, from the mounted file.
            assert pods.mounted == {
                "tp-tradeplane-test-trade": ["/etc/tradeplane/credentials/admin.json"],
                "tp-tradeplane-ledger-0": ["/etc/tradeplane/credentials/ledger.json"]}
            # The hook's Market was a real one: the operator made its engines.
            assert world.cluster.get("statefulsets", "helm-test-usdt-engine") is not None
    run(scenario(), timeout=180)

