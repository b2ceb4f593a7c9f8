"""The kopf handlers: they register, unpack kopf's arguments and call ``reconcile``.

Every handler hands its work to a plain function and maps errors with ``to_kopf``.
The operator runs as one replica and is never in the failover path: the replicas elect
their leader through NATS; the operator only sets up, reports and retires markets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from tradeplane_operator import metrics, protection, storage
from tradeplane_operator.children import Market, is_subset
from tradeplane_operator.config import (
    FINALIZER,
    MARKET_LABEL,
    SWITCHOVER_ANNOTATION,
    Config,
)
from tradeplane_operator.crd import GROUP, PLURAL, VERSION
from tradeplane_operator.errors import InvalidMarketError, KubeError, to_kopf
from tradeplane_operator.exchange import Exchange
from tradeplane_operator.kube import MARKETS, KubeApi
from tradeplane_operator.leadership import (
    Election,
    LeadershipLostError,
    Lease,
    standby_liveness,
    until_stopped,
)
from tradeplane_operator.reconcile import (
    Notify,
    finalize,
    observe,
    paused,
    reconcile,
    switch_over,
)
from tradeplane_operator.status import ACCEPTED, condition, timestamp, with_condition

T = TypeVar("T")
OWNED: dict[str, Any] = {MARKET_LABEL: kopf.PRESENT}


@dataclass
class Runtime:
    """What every handler shares (kopf hands it over as ``memo``)."""

    config: Config
    connection: kopf.ConnectionInfo | None = None
    """Fixed credentials (tests); None: the service account, else the kubeconfig."""
    kube: KubeApi | None = None
    exchange: Exchange | None = None


def settings() -> kopf.OperatorSettings:
    result = kopf.OperatorSettings()
    result.persistence.finalizer = FINALIZER
    result.persistence.progress_storage = storage.progress_storage()
    result.persistence.diffbase_storage = storage.DiffBaseStorage()
    result.posting.level = logging.WARNING  # Events are ours, not every log line
    result.watching.server_timeout = 300
    result.watching.client_timeout = 330
    result.networking.error_backoffs = [1, 2, 5, 10]
    # A Market deleted while one of its timers is mid-run (the status report runs every
    # 2 s) keeps its finalizer until kopf sees the timer gone; kopf looks every 60 s by
    # default, so a deletion could wait a minute after it was done.
    result.background.cancellation_polling = 0.5
    return result


async def _guarded[T](work: Awaitable[T]) -> T:
    try:
        return await work
    except Exception as exc:
        mapped = to_kopf(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _notify(body: kopf.Body) -> Notify:
    def notify(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)
    return notify


def _parse(body: kopf.Body) -> Market:
    """The Market, or a Warning event and a permanent error (retrying will not fix it)."""
    try:
        return Market.from_body(body)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        kopf.event(body, type="Warning", reason="InvalidMarket", message=str(exc)[:1000])
        raise kopf.PermanentError(f"invalid Market: {exc}") from exc


def _parts(memo: Any) -> tuple[Config, KubeApi, Exchange]:
    runtime: Runtime = memo.runtime
    assert runtime.kube is not None
    assert runtime.exchange is not None
    return runtime.config, runtime.kube, runtime.exchange


def _login(runtime: Runtime, logger: kopf.Logger,
           settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    if runtime.connection is not None:
        return runtime.connection
    info = (kopf.login_with_service_account(logger=logger, settings=settings)
            or kopf.login_with_kubeconfig(logger=logger, settings=settings))
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig")
    return info


def registry(config: Config) -> kopf.OperatorRegistry:
    """A fresh registry with every handler (one per operator run, so tests can run
    several operators in one process, each with its own intervals)."""
    reg = kopf.OperatorRegistry()
    kopf.on.login(registry=reg)(login)
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    for on_cause in (kopf.on.update, kopf.on.create, kopf.on.resume):
        on_cause(GROUP, VERSION, PLURAL, id="apply", registry=reg)(apply)
    kopf.timer(GROUP, VERSION, PLURAL, id="repair", interval=config.drift_interval,
               initial_delay=config.drift_interval, registry=reg)(repair)
    kopf.timer(GROUP, VERSION, PLURAL, id="report", interval=config.status_interval,
               registry=reg)(report)
    for child in (("policy", "v1", "poddisruptionbudgets"), ("v1", "services"),
                  ("apps", "v1", "statefulsets")):
        kopf.on.event(*child, id="child", labels=OWNED, registry=reg)(child_gone)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="retire", registry=reg)(retire)
    return reg


def login(memo: Any, logger: kopf.Logger, settings: kopf.OperatorSettings,
          **_: Any) -> kopf.ConnectionInfo:
    return _login(memo.runtime, logger, settings)


async def startup(memo: Any, logger: kopf.Logger, settings: kopf.OperatorSettings,
                  **_: Any) -> None:
    runtime: Runtime = memo.runtime
    runtime.kube = KubeApi(_login(runtime, logger, settings))
    config = runtime.config
    runtime.exchange = await _guarded(Exchange.connect(
        config.nats_url, config.stream_replicas, config.nats_credentials,
        ca_file=config.nats_ca, cert_file=config.nats_cert, key_file=config.nats_key))


async def cleanup(memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if runtime.kube is not None:
        await runtime.kube.close()
    if runtime.exchange is not None:
        await runtime.exchange.close()


async def apply(body: kopf.Body, meta: kopf.Meta, memo: Any, patch: kopf.Patch,
                logger: kopf.Logger, **_: Any) -> None:
    await _apply(body, meta, memo, patch, logger)


async def repair(body: kopf.Body, meta: kopf.Meta, memo: Any, patch: kopf.Patch,
                 logger: kopf.Logger, **_: Any) -> None:
    """Children edited by hand come back to what the Market says (for a Market the
    operator has applied: not one refused as invalid, nor one being deleted)."""
    applied = body.get("status", {}).get("observedGeneration") == meta.get("generation")
    if applied and not meta.get("deletionTimestamp"):
        await _apply(body, meta, memo, patch, logger)


async def report(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, memo: Any,
                 **_: Any) -> None:
    kube, exchange = _parts(memo)[1:]
    if "observedGeneration" not in status:
        return  # never applied (yet, or refused): nothing of it runs to report on
    try:
        market = Market.from_body(body)
    except ValueError:
        return  # reported once by the handler that applies it
    change = await _guarded(metrics.reading(market, observe(
        market, exchange, dict(status), paused=paused(dict(meta.annotations)),
        deleting=bool(meta.get("deletionTimestamp")))))
    if is_subset(change.status, dict(status)):
        return  # no write when nothing changed
    if not await _guarded(_write_status(kube, body, change.status)):
        return  # the Market changed meanwhile: the next reading starts from it
    if change.leader_change:
        kind, reason, message = change.leader_change
        kopf.event(body, type=kind, reason=reason, message=message)


async def _write_status(kube: KubeApi, body: kopf.Body, status: dict[str, Any]) -> bool:
    """Write a status reading unless the Market changed since it was read (False then).

    A merge patch replaces the whole conditions list, and the reading keeps the
    conditions others write (``Accepted``, ``Retiring``) as it read them: written over a
    newer Market, it would put an older one of those back. The ``resourceVersion`` it
    read is the patch's precondition, so the API server refuses such a write (409)."""
    meta = body["metadata"]
    try:
        await kube.patch(MARKETS, meta["namespace"], meta["name"],
                         {"metadata": {"resourceVersion": meta["resourceVersion"]},
                          "status": status}, subresource="status")
    except KubeError as exc:
        if exc.status == 409:
            return False
        raise
    return True


async def child_gone(event: kopf.RawEvent, body: kopf.Body, memo: Any,
                     logger: kopf.Logger, **_: Any) -> None:
    """A deleted child comes back at once (unless its Market is going too)."""
    if event["type"] != "DELETED":
        return
    kube = _parts(memo)[1]
    owner = await _guarded(kube.get(MARKETS, body.metadata.namespace,
                                    body.metadata.labels[MARKET_LABEL]))
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    if paused(owner["metadata"].get("annotations") or {}):
        return
    logger.info("%s %s was deleted; recreating it", body.get("kind"), body.metadata.name)
    await _reconcile(kopf.Body(owner), memo, logger)  # type: ignore[arg-type]


async def retire(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, memo: Any,
                 runtime: datetime.timedelta, **_: Any) -> None:
    """Held while the Market is protected (kopf keeps the finalizer and tries again);
    then the market is retired, its patience counted from when retiring began."""
    config, kube, exchange = _parts(memo)
    market = _parse(body)
    conditions = await _guarded(protection.admit_deletion(
        market, dict(meta.annotations), list(status.get("conditions") or []), kube,
        _notify(body)))
    elapsed = protection.retiring_for(conditions, runtime,
                                      datetime.datetime.now(tz=datetime.UTC))
    await _guarded(finalize(market, kube, exchange, config, _notify(body), elapsed,
                            dict(status.get("retirement") or {})))
    metrics.retired(body)


async def run(config: Config, *, connection: kopf.ConnectionInfo | None = None,
              stop: asyncio.Event | None = None, ready: asyncio.Event | None = None,
              liveness: str | None = None) -> None:
    """Run the operator until ``stop`` is set (or the process is signalled): with leader
    election, wait for the Lease first, and act only while holding it."""
    if not config.leader_election:
        await _operate(config, connection, stop, ready, liveness)
        return
    kube = KubeApi(connection or _login(Runtime(config), logging.getLogger(__name__),
                                        settings()), "tradeplane-operator")
    lease = Lease(kube, Election(config.lease_namespace, config.lease_name, config.identity,
                                 config.lease_duration, config.renew_deadline,
                                 config.retry_period))
    try:
        async with standby_liveness(liveness):
            if not await until_stopped(stop, lease.acquire()):
                return
        await _lead(lease, config, connection, stop, ready, liveness)
    finally:
        await kube.close()


async def _lead(lease: Lease, config: Config, connection: kopf.ConnectionInfo | None,
                stop: asyncio.Event | None, ready: asyncio.Event | None,
                liveness: str | None) -> None:
    """kopf while the Lease is held. Lost: kopf is cancelled at once (it must not act
    past the renew deadline) and ``LeadershipLostError`` raised. Stopped in order: kopf
    stops as it does, then the Lease is released. Cancelled (a test's crash): neither."""
    acting = asyncio.Event()
    operating = asyncio.ensure_future(_operate(config, connection, acting, ready, liveness))
    holding = asyncio.ensure_future(lease.hold())
    stopping = asyncio.ensure_future(stop.wait() if stop else asyncio.Future())
    try:
        await asyncio.wait({operating, holding, stopping},
                           return_when=asyncio.FIRST_COMPLETED)
        if holding.done():
            operating.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await operating
            holding.result()  # raises LeadershipLostError
        acting.set()
        await operating
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeadershipLostError):
            await holding
        await lease.release()
    finally:
        for task in (operating, holding, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(operating, holding, stopping, return_exceptions=True)


async def _operate(config: Config, connection: kopf.ConnectionInfo | None,
                   stop: asyncio.Event | None, ready: asyncio.Event | None,
                   liveness: str | None) -> None:
    await kopf.operator(
        registry=registry(config), settings=settings(),
        memo=kopf.Memo(runtime=Runtime(config, connection)),
        standalone=True, clusterwide=not config.namespaces, namespaces=config.namespaces,
        stop_flag=stop, ready_flag=ready, liveness_endpoint=liveness)


async def _reconcile(body: kopf.Body, memo: Any, logger: kopf.Logger | logging.Logger) -> None:
    config, kube, exchange = _parts(memo)
    try:
        market = Market.from_body(body)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        await _refuse(body, kube, "InvalidMarket", f"invalid Market: {exc}")
        raise kopf.PermanentError(f"invalid Market: {exc}") from exc
    try:
        done = await metrics.reconciling(market, _guarded(
            reconcile(market, kube, exchange, config, _notify(body))))
    except kopf.PermanentError as exc:
        cause = exc.__cause__
        reason = (cause.reason if isinstance(cause, InvalidMarketError) else
                  "ChildRefused" if isinstance(cause, KubeError) else "InvalidMarket")
        await _refuse(body, kube, reason, str(exc))
        raise
    for line in done:
        logger.info(line)


async def _refuse(body: kopf.Body, kube: KubeApi, reason: str, message: str) -> None:
    """A Warning Event, and ``Accepted`` turned ``False`` for this generation: nothing of
    the generation is applied (retrying will not help; a new spec is needed)."""
    kopf.event(body, type="Warning", reason=reason, message=message[:1000])
    conditions = list((body.get("status") or {}).get("conditions") or [])
    generation = int(body["metadata"].get("generation") or 1)
    refused = condition(ACCEPTED, False, reason, message, generation, conditions,
                        timestamp())
    if not _has(conditions, refused):
        await _guarded(kube.patch(MARKETS, body["metadata"]["namespace"],
                                  body["metadata"]["name"],
                                  {"status": {"conditions": with_condition(conditions,
                                                                           refused)}},
                                  subresource="status"))


def _has(conditions: list[dict[str, Any]], wanted: dict[str, Any]) -> bool:
    """Is ``wanted`` written already (but for its transition time)?"""
    return any(all(c.get(key) == wanted[key] for key in
                   ("type", "status", "observedGeneration", "reason", "message"))
               for c in conditions)


async def _apply(body: kopf.Body, meta: kopf.Meta, memo: Any, patch: kopf.Patch,
                 logger: kopf.Logger) -> None:
    annotations = dict(meta.annotations)
    if paused(annotations):
        logger.info("reconciliation is paused")
        return
    await _reconcile(body, memo, logger)
    generation = int(meta.get("generation") or 1)
    patch.status["observedGeneration"] = generation
    conditions = list((body.get("status") or {}).get("conditions") or [])
    accepted = condition(ACCEPTED, True, "Accepted", "children and definition are as the "
                         "spec says", generation, conditions, timestamp())
    if not _has(conditions, accepted):
        patch.status["conditions"] = with_condition(conditions, accepted)
    target = annotations.get(SWITCHOVER_ANNOTATION)
    if target:
        exchange = _parts(memo)[2]
        await _guarded(switch_over(_parse(body), target, exchange, _notify(body)))
        patch.metadata.annotations[SWITCHOVER_ANNOTATION] = None
