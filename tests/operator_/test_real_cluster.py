"""Against a real Kubernetes API server (kind, k3d, any cluster you may write to).

Skipped unless ``TRADEPLANE_KUBECONFIG`` names a kubeconfig; see docs/operator.md:

    kind create cluster --name tradeplane
    TRADEPLANE_KUBECONFIG=~/.kube/config make pytest PYTEST_ARGS="-m k8s"

What the emulator cannot show, this does: the API server itself validates the CRD's
schema and CEL rules, and accepts the children the operator builds; it stores quantities
canonically (the drift check must see no change in that) and prunes status fields the
schema does not list (the operator's conditions must come back whole). Everything is
made in a namespace of its own and deleted at the end; the CRD is left installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import secrets
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from tests.operator_.harness import CREDENTIALS_SECRET
from tests.operator_.test_crd import EXAMPLES, INVALID, PLACED, RESOURCES
from tests.operator_.test_kubectl import kubectl
from tests.support.exchange import eventually, run
from tradeplane.processes import NatsServer
from tradeplane_operator import handlers
from tradeplane_operator.children import Market, is_subset, removals, statefulset
from tradeplane_operator.config import Config
from tradeplane_operator.kube import (
    DISRUPTION_BUDGETS,
    MARKETS,
    SERVICES,
    STATEFULSETS,
    KubeApi,
)

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = os.environ.get("TRADEPLANE_KUBECONFIG", "")
CEL_MESSAGES = {"tickSize must be positive", "lotSize must be positive", "needs a standby",
                "referencePrice must be positive",
                "a toleration without a key must have operator Exists",
                "a toleration with operator Exists takes no value",
                "tolerationSeconds is for effect NoExecute only",
                "minDomains is for whenUnsatisfiable DoNotSchedule only"}

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.skipif(not KUBECONFIG, reason="set TRADEPLANE_KUBECONFIG to a real "
                                              "cluster's kubeconfig (kind or k3d)"),
]


@pytest.fixture
def namespace(tmp_path: Path) -> Any:
    config = Path(KUBECONFIG).expanduser()
    name = f"tradeplane-test-{secrets.token_hex(3)}"

    async def prepare() -> None:
        code, output = await kubectl(config, "apply", "-f", str(
            ROOT / "charts" / "tradeplane" / "crds" / "markets.tradeplane.dev.yaml"))
        assert code == 0, output
        code, output = await kubectl(config, "wait", "--for=condition=Established",
                                     "crd/markets.tradeplane.dev", "--timeout=60s")
        assert code == 0, output
        code, output = await kubectl(config, "create", "namespace", name)
        assert code == 0, output
    run(prepare())
    yield config, name
    run(kubectl(config, "delete", "namespace", name, "--wait=false"))


def _manifest_file(tmp_path: Path, manifest: dict[str, Any]) -> str:
    path = tmp_path / f"{manifest['metadata']['name']}-{secrets.token_hex(2)}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def test_the_api_server_enforces_the_crd(namespace: tuple[Path, str], tmp_path: Path) -> None:
    config, name = namespace

    async def scenario() -> None:
        for example in EXAMPLES:
            code, output = await kubectl(config, "apply", "--dry-run=server", "-n", name,
                                         "-f", str(example))
            assert code == 0, output
        base = yaml.safe_load(EXAMPLES[0].read_text())
        for _, change, message in INVALID:
            manifest = copy.deepcopy(base)
            manifest["spec"].update(change)
            code, output = await kubectl(config, "apply", "--dry-run=server", "-n", name,
                                         "-f", _manifest_file(tmp_path, manifest))
            assert code != 0, f"{change} was accepted"
            assert "is invalid" in output or "Invalid value" in output, output
            if message in CEL_MESSAGES:
                assert message in output, output
        # Resources as ResourceRequirements: quantities by Kubernetes' pattern. (An
        # unknown section is pruned, not refused, by the API server.)
        for _, resources, reason in RESOURCES:
            manifest = copy.deepcopy(base)
            manifest["spec"]["engine"] = {"resources": resources}
            code, output = await kubectl(config, "apply", "--dry-run=server", "-n", name,
                                         "-f", _manifest_file(tmp_path, manifest))
            refused = reason is not None and "Additional properties" not in reason
            assert (code != 0) is refused, (resources, output)
    run(scenario(), timeout=120)


def test_the_operator_makes_children_the_api_server_accepts(
        namespace: tuple[Path, str], tmp_path: Path) -> None:
    config_path, name = namespace

    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        assert server.secrets is not None
        # The engines' credentials, as the chart's README has them made.
        code, output = await kubectl(
            config_path, "create", "secret", "generic", CREDENTIALS_SECRET, "-n", name,
            f"--from-file={server.secrets.credentials('engine').parent}")
        assert code == 0, output
        os.environ["KUBECONFIG"] = str(config_path)
        stop, ready = asyncio.Event(), asyncio.Event()
        config = Config(nats_url=server.url, namespaces=(name,), final_snapshot_timeout=1,
                        nats_credentials=str(server.secrets.credentials("operator")),
                        engine_credentials_secret=CREDENTIALS_SECRET,
                        lease_namespace=name)  # the Lease goes with the namespace
        task = asyncio.create_task(handlers.run(config, stop=stop, ready=ready))
        info = kopf.login_with_kubeconfig(logger=__import__("logging").getLogger("test"),
                                          settings=kopf.OperatorSettings())
        assert info is not None
        kube = KubeApi(info)
        try:
            await asyncio.wait_for(ready.wait(), 30)
            manifest = yaml.safe_load(EXAMPLES[0].read_text())
            manifest["spec"].update(copy.deepcopy(PLACED))  # every placement field
            manifest["spec"]["engine"]["resources"] = {
                "requests": {"cpu": "1.5", "memory": "0.5Gi"}, "limits": {"cpu": 2}}
            await kube.create(MARKETS, name, manifest)
            market = manifest["metadata"]["name"]

            async def made() -> bool:  # the children are made in this order
                return await kube.get(DISRUPTION_BUDGETS, name, f"{market}-engine") is not None
            await eventually(made, 60, "the children on the real API server")
            for resource in (STATEFULSETS, SERVICES):
                assert await kube.get(resource, name, f"{market}-engine") is not None
            # What the API server stored (its defaults added, empty fields dropped) is
            # what the operator would write again: no drift, nothing to remove, so the
            # drift check does not patch forever.
            stored_market = await kube.get(MARKETS, name, market)
            stored = await kube.get(STATEFULSETS, name, f"{market}-engine")
            assert stored_market is not None
            assert stored is not None
            desired = statefulset(Market.from_body(stored_market), config)
            assert is_subset(desired["spec"], stored["spec"]), stored["spec"]
            assert removals(desired, stored) == {}
            # Quantities are stored canonically; the drift check compares amounts.
            assert stored["spec"]["template"]["spec"]["containers"][0]["resources"] == {
                "requests": {"cpu": "1500m", "memory": "512Mi"}, "limits": {"cpu": "2"}}

            # The status schema keeps what the operator writes (a real API server prunes
            # what it does not list): Accepted, with its observed generation.
            async def accepted() -> bool:
                status = (await kube.get(MARKETS, name, market) or {}).get("status") or {}
                return any(c.get("type") == "Accepted" and c.get("status") == "True"
                           and c.get("observedGeneration") == 1 and c.get("reason")
                           for c in status.get("conditions") or [])
            await eventually(accepted, 30, "Accepted stored as written")
            code, output = await kubectl(config_path, "get", "markets", "-n", name)
            assert code == 0, output
            assert output.split()[:6] == ["NAME", "MODE", "READY", "LEADER", "SEQUENCE",
                                          "AGE"], output
            await kube.patch(MARKETS, name, market, {"metadata": {"annotations": {
                "tradeplane.dev/deletion-protection": "false"}}})
            await kube.delete(MARKETS, name, market)

            async def gone() -> bool:
                return await kube.get(MARKETS, name, market) is None
            await eventually(gone, 60, "the finalizer ran")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
            await kube.close()
            server.stop()
    run(scenario(), timeout=180)
