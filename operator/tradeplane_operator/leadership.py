"""Which operator replica acts: a ``coordination.k8s.io`` Lease, as client-go elects.

Every replica runs this; only the one holding the Lease runs kopf and its handlers, the
others read the Lease every ``retry_period`` and wait. The protocol is client-go's
``leaderelection``, so ``kubectl get lease`` reads as it does for any controller:

- a replica takes the Lease when nobody holds it, or when it has not seen it change for
  ``lease_duration`` (judged by its own clock from when it last saw the Lease change, not
  by the holder's ``renewTime``: clocks of two nodes need not agree);
- the holder renews it every ``retry_period``; every write carries the Lease's
  ``resourceVersion``, so of two replicas writing at once one gets 409 and stays behind;
- a holder that cannot renew for ``renew_deadline`` (shorter than ``lease_duration``)
  gives up before anyone else may take over: ``LeadershipLostError``, and the process exits;
- a holder that stops in order releases the Lease, and the next replica takes it at
  its next reading.

Why not kopf's peering: see docs/operator.md (Leader election).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.web

from tradeplane_operator.errors import KubeError, OperatorError
from tradeplane_operator.kube import LEASES, KubeApi

logger = logging.getLogger(__name__)


class LeadershipLostError(OperatorError):
    """The Lease could not be renewed in time, or another replica holds it now: this
    replica must stop acting at once (the process exits; its pod starts again as a
    standby)."""


@dataclass(frozen=True)
class Election:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_time() -> str:
    """The Lease's ``MicroTime``: RFC 3339 with microseconds."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    """One replica's view of the Lease, and its writes to it."""

    def __init__(self, kube: KubeApi, election: Election) -> None:
        self.kube = kube
        self.election = election
        self._observed: tuple[str, float] | None = None
        """The Lease's resourceVersion last seen, and when (monotonic) it was first seen."""
        self._version: str | None = None
        """The resourceVersion of this replica's own last write, while it holds it."""

    async def try_acquire_or_renew(self) -> str:
        """One round: take or renew the Lease if this replica may. The holder after the
        round (this replica's identity when it holds the Lease)."""
        election, now = self.election, _micro_time()
        current = await self.kube.get(LEASES, election.namespace, election.name)
        mine = {"holderIdentity": election.identity,
                "leaseDurationSeconds": round(election.lease_duration), "renewTime": now}
        if current is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": election.name, "namespace": election.namespace},
                    "spec": {**mine, "acquireTime": now, "leaseTransitions": 0}}
            try:
                created = await self.kube.create(LEASES, election.namespace, body)
            except KubeError as exc:
                if exc.status == 409:
                    return ""  # another replica created it first; read it next round
                raise
            self._took(created)
            return election.identity
        spec = current.get("spec") or {}
        version = current["metadata"]["resourceVersion"]
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, time.monotonic())
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or election.lease_duration
        if (holder and holder != election.identity
                and time.monotonic() < self._observed[1] + duration):
            return str(holder)
        if holder != election.identity:
            mine |= {"acquireTime": now,
                     "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}
        try:
            patched = await self.kube.patch(LEASES, election.namespace, election.name, {
                "metadata": {"resourceVersion": version}, "spec": mine})
        except KubeError as exc:
            if exc.status == 409:
                return ""  # written meanwhile; read it again next round
            raise
        self._took(patched)
        return election.identity

    def _took(self, lease: dict[str, Any] | None) -> None:
        version = str((lease or {}).get("metadata", {}).get("resourceVersion", ""))
        self._version = version
        self._observed = (version, time.monotonic())

    async def _round(self) -> str | None:
        """A round whose failure (API unreachable, refused) is logged: None."""
        try:
            return await self.try_acquire_or_renew()
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("leader election: could not read or write the Lease %s/%s: %s",
                           self.election.namespace, self.election.name, exc)
            return None

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        election, holder_seen = self.election, None
        while True:
            holder = await self._round()
            if holder == election.identity:
                logger.info("leader election: %s leads (Lease %s/%s)", election.identity,
                            election.namespace, election.name)
                return
            if holder and holder != holder_seen:
                logger.info("leader election: %s leads; %s waits", holder, election.identity)
                holder_seen = holder
            await asyncio.sleep(election.retry_period * random.uniform(1.0, 1.2))

    async def hold(self) -> None:
        """Renew the Lease every ``retry_period`` until it cannot be: then raise
        ``LeadershipLostError`` (at most ``renew_deadline`` after the last renewal, or at once
        when another replica holds it)."""
        election = self.election
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(election.retry_period)
            holder = await self._round()
            if holder == election.identity:
                renewed = time.monotonic()
            elif holder:
                raise LeadershipLostError(f"{holder} holds the Lease {election.name} now")
            elif time.monotonic() - renewed >= election.renew_deadline:
                raise LeadershipLostError(f"the Lease {election.name} was not renewed for "
                                     f"{election.renew_deadline:g} s")

    async def release(self) -> None:
        """Give the Lease up (a replica stopping in order): the next one need not wait for
        it to expire. Nothing when another replica has written it since."""
        if self._version is None:
            return
        election, now = self.election, _micro_time()
        with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
            await self.kube.patch(LEASES, election.namespace, election.name, {
                "metadata": {"resourceVersion": self._version},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                         "renewTime": now, "acquireTime": now}})
            logger.info("leader election: %s released the Lease", election.identity)
        self._version = None


@contextlib.asynccontextmanager
async def standby_liveness(endpoint: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe on kopf's endpoint while kopf does not run (a standby
    is alive: it reads the Lease); kopf serves it from the moment it leads."""
    if not endpoint:
        yield
        return
    address = urlsplit(endpoint)

    async def healthy(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"standby": True})

    app = aiohttp.web.Application()
    app.router.add_get(address.path or "/", healthy)
    runner = aiohttp.web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, address.hostname, address.port or 80).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def until_stopped(stop: asyncio.Event | None, work: Awaitable[None]) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it): whether it finished."""
    task = asyncio.ensure_future(work)
    if stop is None:
        await task
        return True
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
