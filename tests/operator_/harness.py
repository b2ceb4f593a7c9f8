"""The operator in-process against the emulated API server and a real nats-server.

``operator_world`` starts both, installs the Market CRD, runs kopf with the
operator's handlers, and hands the test a client for each side. ``Kubelet`` plays the
part of the StatefulSet controller and kubelet: for each engine StatefulSet it runs
that many real engine replicas in-process (named like the pods), and stops them when
the StatefulSet goes or shrinks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import nats
from nats.aio.client import Client as NatsClient

from tests.support.exchange import SETTINGS, eventually
from tests.support.kube import Cluster, cluster
from tradeplane.processes import NatsServer
from tradeplane_engine.service import MarketService
from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.service.runner import market_definition
from tradeplane_engine.service.streams import markets_bucket
from tradeplane_operator import handlers
from tradeplane_operator.config import Config
from tradeplane_operator.crd import crd
from tradeplane_operator.kube import MARKETS, STATEFULSETS, KubeApi, Resource

TEST_AGENT = "tradeplane-tests"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)


@dataclass
class World:
    cluster: Cluster
    kube: KubeApi
    nc: NatsClient
    nats_url: str
    config: Config

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        created = await self.kube.create(MARKETS, "default", manifest)
        assert created is not None
        return created

    async def patch(self, name: str, body: dict[str, Any]) -> None:
        await self.kube.patch(MARKETS, "default", name, body)

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
    server = NatsServer(tmp_path / "nats").start()
    try:
        async with cluster(tmp_path) as emulated:
            kube = KubeApi(kopf.ConnectionInfo(server=emulated.url), TEST_AGENT)
            await kube.create(CRDS, None, crd())
            # The drift check keeps its default (30 s), as users get it: what must
            # happen at once must not wait for it. A test that is about the check
            # itself shortens it explicitly.
            settings = Config(**{"nats_url": server.url, "status_interval": 0.2,
                                 "final_snapshot_timeout": 10.0, **config})
            nc = await nats.connect(server.url)
            world = World(emulated, kube, nc, server.url, settings)
            try:
                if start:
                    async with running_operator(world):
                        yield world
                else:
                    yield world
            finally:
                await nc.drain()
                await kube.close()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def running_operator(world: World) -> AsyncIterator[None]:
    """The operator's handlers in kopf, in this event loop, until the block ends.

    When kopf stops it cancels every task started in its loop while it ran: engines
    (``Kubelet``) must stop first, and NATS requests made meanwhile may not outlive it."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(handlers.run(
        world.config, connection=kopf.ConnectionInfo(server=world.cluster.url),
        stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


@dataclass
class Kubelet:
    """Runs the engine replicas each StatefulSet asks for, as in-process services."""

    world: World
    running: dict[str, tuple[MarketService, asyncio.Task[None]]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    """Pods that stay dead (a node that is gone), until ``revive``."""
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for pod in list(self.running):
            await self.kill(pod)

    async def kill(self, pod: str, *, restart: bool = True) -> None:
        """Stop a replica at once; the StatefulSet starts it again unless ``restart``
        is false."""
        if not restart:
            self.down.add(pod)
        _, task = self.running.pop(pod)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    def service(self, pod: str) -> MarketService:
        return self.running[pod][0]

    async def _loop(self) -> None:
        js = self.world.nc.jetstream()
        kv = await markets_bucket(js, SETTINGS)
        leases = await leases_bucket(js, 1, True)
        statuses = await replicas_bucket(js, 1, True)
        while True:
            wanted: dict[str, str] = {}
            for name, sts in self.world.cluster.objects(STATEFULSETS.plural).items():
                market = sts["metadata"]["labels"]["tradeplane.dev/market"]
                for ordinal in range(sts["spec"]["replicas"]):
                    wanted[f"{name}-{ordinal}"] = market
            for pod in set(self.running) - set(wanted):
                await self.kill(pod)
            for pod in set(wanted) - set(self.running) - self.down:
                definition = await market_definition(kv, wanted[pod])
                service = MarketService(self.world.nc, definition, SETTINGS, replica=pod,
                                        leases=leases, replicas=statuses)
                self.running[pod] = (service, asyncio.create_task(service.run()))
            await asyncio.sleep(0.05)


__all__ = ["Kubelet", "World", "eventually", "market_manifest", "operator_world",
           "running_operator"]
