"""The operator in-process against the emulated API server and a real nats-server.

``operator_world`` starts both, installs the Market CRD, runs kopf with the
operator's handlers, and hands the test a client for each side. ``Kubelet`` plays the
part of the StatefulSet controller and kubelet: for each engine StatefulSet it runs
that many real engine replicas in-process (named like the pods), and stops them when
the StatefulSet goes or shrinks.

NATS runs with the real accounts and permissions (docs/security.md). The operator
connects as ``operator``; the services' credentials are in the Secret
``tradeplane-nats`` (as ``tradeplane security init`` and ``kubectl create secret``
make it), which the operator mounts into its engine pods; ``Kubelet`` mounts what a
pod's spec says and connects each replica with the credentials found there, so a
permission the operator or the engines lack, or a pod that mounts the wrong file,
fails the test. The test's own connection (``World.nc``) is the admin's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import shutil
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import nats
from nats.aio.client import Client as NatsClient

from tests.support.exchange import SETTINGS, eventually
from tests.support.kube import Cluster, cluster
from tradeplane import security
from tradeplane.processes import NatsServer
from tradeplane.security import SecurityFiles
from tradeplane_engine.access import Access
from tradeplane_engine.connection import connect
from tradeplane_engine.service import MarketService
from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.streams import StreamSettings, market_definition, markets_bucket
from tradeplane_operator import handlers
from tradeplane_operator.config import DELETION_PROTECTION_ANNOTATION, Config
from tradeplane_operator.crd import crd
from tradeplane_operator.kube import MARKETS, STATEFULSETS, KubeApi, Resource

TEST_AGENT = "tradeplane-tests"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
SECRETS = Resource("", "v1", "secrets")
CREDENTIALS_SECRET = "tradeplane-nats"
"""The Secret with every service's NATS credentials (the chart's default name)."""


@dataclass
class World:
    cluster: Cluster
    kube: KubeApi
    nc: NatsClient
    """The admin's connection."""
    nats_url: str
    config: Config
    server: NatsServer
    directory: Path
    connections: list[NatsClient] = field(default_factory=list)

    async def connect(self, identity: str) -> NatsClient:
        """A connection as a service identity (``engine``, ``recorder``...), closed
        with the world."""
        nc = await nats.connect(self.server.url, **self.server.access(identity).options())
        self.connections.append(nc)
        return nc

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        created = await self.kube.create(MARKETS, "default", manifest)
        assert created is not None
        return created

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        await self.kube.patch(MARKETS, "default", name, body)

    async def unprotect(self, name: str, namespace: str = "default") -> None:
        """Allow the Market's deletion (it is protected unless annotated \"false\")."""
        await self.kube.patch(MARKETS, namespace, name, {"metadata": {"annotations": {
            DELETION_PROTECTION_ANNOTATION: "false"}}})

    async def market(self, name: str) -> dict[str, Any] | None:
        return await self.kube.get(MARKETS, "default", name)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Events about a Market, oldest first."""
        events = [event for event in self.cluster.objects("events").values()
                  if event.get("involvedObject", {}).get("name") == name]
        return sorted(events, key=lambda event: int(event["metadata"]["resourceVersion"]))

    def reasons(self, name: str) -> list[str]:
        return [event["reason"] for event in self.events(name)]

    def requests_beyond(self, allowed: dict[Resource, frozenset[str]]) -> set[str]:
        """The operator's API requests so far that ``allowed`` (its RBAC) does not cover.

        The emulator also served the tests' own requests (creating Markets, deleting
        children) and kubectl's; their User-Agents say whose they are."""
        granted = {(resource.group, resource.plural, verb)
                   for resource, verbs in allowed.items() for verb in verbs}
        beyond = set()
        for request in self.cluster.emulator._requests:
            agent = request.headers.get("User-Agent", "")
            if request.resource is None or agent == TEST_AGENT or agent.startswith("kubectl"):
                continue
            if request.resource.plural is None:
                continue  # discovery (/apis/<group>/<version>): needs no permission
            plural = request.resource.plural + (f"/{request.subresource}"
                                                if request.subresource else "")
            verb = _verb(request.method, request.name, request.params)
            if (request.resource.group, plural, verb) not in granted:
                beyond.add(f"{verb} {request.resource.group or 'core'}/{plural}")
        return beyond


def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    if method == "GET":
        return "watch" if params.get("watch") == "true" else "get" if name else "list"
    return {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(
        method, method.lower())


def market_manifest(name: str = "sol-usdt", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tradeplane.dev/v1alpha1", "kind": "Market",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"base": "SOL", "quote": "USDT", "tickSize": "0.01", "lotSize": "0.01",
                 "minNotional": "1", "tradingMode": "open", "replicas": 2,
                 "snapshotEvery": 1000, **spec},
    }


@contextlib.asynccontextmanager
async def operator_world(tmp_path: Path, *, start: bool = True,
                         **config: Any) -> AsyncIterator[World]:
    """The emulated API server and a nats-server, with the operator running on them
    unless ``start`` is false (then the test runs it with ``running_operator``)."""
    server = NatsServer.secured(tmp_path / "nats").start()
    assert server.secrets is not None
    try:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url), TEST_AGENT)
            await kube.create(CRDS, None, crd())
            await kube.create(SECRETS, "default", credentials_secret(server.secrets))
            # The drift check keeps its default (30 s), as users get it: what must
            # happen at once must not wait for it. A test that is about the check
            # itself shortens it explicitly.
            settings = Config(**{
                "nats_url": server.url,
                "nats_credentials": str(server.secrets.credentials("operator")),
                "engine_credentials_secret": CREDENTIALS_SECRET, "status_interval": 0.2,
                "final_snapshot_timeout": 10.0, **config})
            nc = await nats.connect(server.url, **server.access("admin").options())
            world = World(emulated, kube, nc, server.url, settings, server, tmp_path)
            try:
                if start:
                    async with running_operator(world):
                        yield world
                else:
                    yield world
            finally:
                for connection in world.connections:
                    await connection.close()
                await nc.drain()
                await kube.close()
    finally:
        server.stop()


def credentials_secret(secrets: SecurityFiles) -> dict[str, Any]:
    """The Secret ``kubectl create secret generic tradeplane-nats
    --from-file=DIR/credentials/ --from-file=DIR/issuer.nk`` makes."""
    keys = {f"{identity}.json": secrets.credentials(identity)
            for identity in security.IDENTITIES} | {"issuer.nk": secrets.issuer_seed}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CREDENTIALS_SECRET},
            "data": {key: base64.b64encode(path.read_bytes()).decode()
                     for key, path in keys.items()}}


@dataclass
class Mounted:
    """A pod's Secret volumes as a kubelet would mount them, under a directory here."""

    places: dict[str, str]
    """Each mount path, and the directory that stands in for it."""
    files: list[str]
    """The files mounted, as the pod sees them."""

    def environment(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment (its plain values), paths under a mount
        pointed at the mount's stand-in."""
        env = {item["name"]: item["value"] for item in container.get("env", [])
               if "value" in item}
        for variable, value in env.items():
            for mount_path, place in self.places.items():
                if value.startswith(f"{mount_path}/"):
                    env[variable] = place + value[len(mount_path):]
        return env


def mount_secrets(cluster: Cluster, pod: dict[str, Any], directory: Path,
                  namespace: str = "default") -> Mounted:
    """Write the items of a pod spec's Secret volumes (from the Secrets in the API
    server, with their modes) under ``directory``, afresh."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    shutil.rmtree(directory, ignore_errors=True)
    mounted = Mounted({}, [])
    for mount in pod["containers"][0].get("volumeMounts") or []:
        source = volumes[mount["name"]]["secret"]
        secret = cluster.get("secrets", source["secretName"], namespace)
        assert secret is not None, f"no Secret {source['secretName']} to mount"
        place = directory / mount["name"]
        place.mkdir(parents=True)
        for item in source["items"]:
            path = place / item["path"]
            path.write_bytes(base64.b64decode(secret["data"][item["key"]]))
            path.chmod(source["defaultMode"])
            mounted.files.append(f"{mount['mountPath']}/{item['path']}")
        mounted.places[mount["mountPath"]] = str(place)
    return mounted


@contextlib.asynccontextmanager
async def running_operator(world: World) -> AsyncIterator[None]:
    """The operator's handlers in kopf until the block ends, ready when it starts.

    It runs as an ``OperatorReplica``: in a thread with an event loop of its own, as in
    its own process. In the test's loop, kopf would take every task started there while
    it ran (the test's NATS requests and connections, the emulator's) for its own, and
    wait 5 s for them when it stops, then cancel them."""
    async with OperatorReplica(world, world.config.identity) as replica:
        if not await asyncio.to_thread(replica.leading.wait, 20):
            raise AssertionError(f"the operator not ready within 20 s: {replica.error!r}")
        yield


@dataclass
class OperatorReplica:
    """One replica of the operator (``handlers.run``, leader election as configured) in
    a thread with an event loop of its own, as a process of its own would be: kopf, when
    it stops, cancels every task started in its loop while it ran, which must not reach
    another replica or the test.

    ``crash`` cancels it where it stands: it neither renews nor releases the Lease, as
    when its pod is killed or its node is lost; ``stop`` stops it in order."""

    world: World
    identity: str
    leading: threading.Event = field(default_factory=threading.Event)
    """Set when kopf runs in it (it holds the Lease and is ready)."""
    error: Exception | None = None
    """What ``handlers.run`` raised, if it ended so (``LeadershipLostError``)."""
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    async def __aenter__(self) -> OperatorReplica:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        daemon=True, name=f"operator {self.identity}")
        self._thread.start()
        assert await asyncio.to_thread(self._started.wait, 20)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop, ready = asyncio.Event(), asyncio.Event()
        config = dataclasses.replace(self.world.config, identity=self.identity)
        self._task = asyncio.create_task(handlers.run(
            config, connection=kopf.ConnectionInfo(server=self.world.cluster.url),
            stop=self._stop, ready=ready))
        self._started.set()
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait([self._task, waiting], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            self.leading.set()
        waiting.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # kept for the test to look at
            self.error = exc

    async def crash(self) -> None:
        assert self._loop is not None
        assert self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        await self._join()

    async def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        await self._join()

    async def ended(self, timeout: float) -> bool:
        """Whether it ended (by itself) within ``timeout`` seconds."""
        assert self._thread is not None
        await asyncio.to_thread(self._thread.join, timeout)
        return not self._thread.is_alive()

    async def _join(self) -> None:
        assert self._thread is not None
        await asyncio.to_thread(self._thread.join, 30)
        assert not self._thread.is_alive(), f"operator {self.identity} did not stop"


@dataclass
class Kubelet:
    """Runs the engine replicas each StatefulSet asks for, as in-process services.

    Each replica mounts its pod's Secret volumes and connects to NATS as its pod's
    environment says (``TRADEPLANE_NATS``, ``TRADEPLANE_CREDENTIALS``...), on a
    connection of its own that goes with it."""

    world: World
    running: dict[str, tuple[MarketService, asyncio.Task[None]]] = field(default_factory=dict)
    connections: dict[str, NatsClient] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    """Pods that stay dead (a node that is gone), until ``revive``."""
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        # asyncio.wait, not ``await``: a cancellation of this test (its deadline) must
        # not be taken for the loop's own and swallowed.
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.result()  # the loop failed: the test fails with its error
        for pod in list(self.running):
            await self.kill(pod)
        for nc in self.connections.values():  # a replica still waiting for its market
            await nc.close()
        self.connections.clear()

    async def kill(self, pod: str, *, restart: bool = True) -> None:
        """Stop a replica at once; the StatefulSet starts it again unless ``restart``
        is false."""
        if not restart:
            self.down.add(pod)
        _, task = self.running.pop(pod)
        task.cancel()
        # asyncio.wait, not ``await task`` under suppress(CancelledError): that would
        # also swallow a cancellation of the caller (the loop, stopped by __aexit__,
        # would then run on until the test's deadline).
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # how a replica ended is not this test's concern
        await self.connections.pop(pod).close()

    def service(self, pod: str) -> MarketService:
        return self.running[pod][0]

    async def _loop(self) -> None:
        while True:
            wanted: dict[str, dict[str, Any]] = {}
            for name, sts in self.world.cluster.objects(STATEFULSETS.plural).items():
                if "tradeplane.dev/market" not in sts["metadata"].get("labels", {}):
                    continue  # not a market's engines (the chart's ledger)
                for ordinal in range(sts["spec"]["replicas"]):
                    wanted[f"{name}-{ordinal}"] = sts
            for pod in set(self.running) - set(wanted):
                await self.kill(pod)
            for pod in set(wanted) - set(self.running) - self.down:
                await self._start(pod, wanted[pod])
            await asyncio.sleep(0.05)

    async def _start(self, pod: str, sts: dict[str, Any]) -> None:
        """What ``tradeplane engine`` does in the pod, up to running the market."""
        market = sts["metadata"]["labels"]["tradeplane.dev/market"]
        spec = sts["spec"]["template"]["spec"]
        env = mount_secrets(self.world.cluster, spec, self.world.directory / "pods" / pod,
                            sts["metadata"].get("namespace", "default")
                            ).environment(spec["containers"][0])
        try:
            nc = await asyncio.wait_for(connect(
                env["TRADEPLANE_NATS"], f"tradeplane-engine:{market}", "engine",
                Access.from_environment(env)), 10)
        except TimeoutError:
            raise AssertionError(f"{pod}: no NATS connection with what its pod spec "
                                 f"mounts and sets") from None
        self.connections[pod] = nc
        js = nc.jetstream()
        # The markets bucket as the operator makes it too (on file), whoever comes first.
        definition = await market_definition(await markets_bucket(js, StreamSettings()),
                                             market)
        service = MarketService(nc, definition, SETTINGS, replica=pod,
                                leases=await leases_bucket(js, 1, True),
                                replicas=await replicas_bucket(js, 1, True))
        self.running[pod] = (service, asyncio.create_task(service.run()))


__all__ = ["CREDENTIALS_SECRET", "Kubelet", "Mounted", "OperatorReplica", "World",
           "eventually", "market_manifest", "mount_secrets", "operator_world",
           "running_operator"]
