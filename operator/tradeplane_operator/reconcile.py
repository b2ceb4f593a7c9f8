"""What the operator does, as plain async functions (the kopf handlers only call these).

``reconcile``  makes the children and the market's definition match the Market, and
               sequences a trading-mode change in the market's command stream;
``observe``    reads the replicas and returns the status (and a failover, if one happened);
``switch_over`` asks the leader to hand the lead to a named replica;
``finalize``   retires a market: cancel-only, cancel every order, wait until the leader
               has published the cancellations, a final snapshot, then the children go.

Each step can run again without doing anything twice: children are compared before
they are written, and admin commands carry message ids the stream deduplicates.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from tradeplane_operator import images
from tradeplane_operator.children import CHILDREN, Market, is_subset, removals, selector
from tradeplane_operator.config import PAUSE_ANNOTATION, Config
from tradeplane_operator.errors import (
    ExchangeError,
    ImageNotAllowedError,
    NameTakenError,
    RefusedError,
    RetryError,
    UnansweredError,
)
from tradeplane_operator.exchange import Exchange
from tradeplane_operator.kube import BY_KIND, MARKETS, KubeApi
from tradeplane_operator.status import Change, Observation, compute, timestamp

Notify = Callable[[str, str, str], None]
"""``notify(type, reason, message)``: a Kubernetes Event on the Market."""


def definition(market: Market) -> dict[str, Any]:
    """The market's definition as engines and gateways read it from ``tp-markets``."""
    spec = market.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    if not spec.get("engine"):
        spec.pop("engine", None)
    return {"name": market.name, **spec}


async def reconcile(market: Market, kube: KubeApi, exchange: Exchange, config: Config,
                    notify: Notify) -> list[str]:
    """Bring everything in line with the Market; what was done, for the log.

    A Market refused (``InvalidMarketError``) changes nothing: not its children, not its
    definition, not its trading mode."""
    check_image(market, config)
    await _check_unique(market, kube, config)
    done = await _apply_children(market, kube, config)
    done += await _apply_definition(market, exchange, notify)
    return done


def check_image(market: Market, config: Config) -> None:
    image = market.spec.engine.image
    if not images.allowed(image, config):
        raise ImageNotAllowedError(
            f"engine image {image!r} is not allowed by the operator's image policy "
            f"({', '.join(images.patterns(config))}); an engine runs with the market's "
            "NATS credentials and database secret")


async def _owner(market: Market, kube: KubeApi,
                 namespaces: tuple[str, ...]) -> dict[str, Any] | None:
    """The other Market that owns this one's name, if any.

    A market's streams and bucket keys are named by the market alone, so two namespaces
    must not both run one of that name: the older Market keeps it, even while it is
    being deleted (its retirement must finish before the name is free again). An
    operator limited to some namespaces looks in those (its RBAC allows no more)."""
    selector = f"metadata.name={market.name}"
    others = ([other for namespace in namespaces
               for other in await kube.list(MARKETS, namespace, selector)]
              if namespaces else await kube.list(MARKETS, None, selector))
    for other in others:
        meta = other["metadata"]
        if meta.get("uid") == market.uid:
            continue
        if (meta.get("creationTimestamp", ""), meta.get("namespace", "")) < (
                market.created, market.namespace):
            return other
    return None


async def _check_unique(market: Market, kube: KubeApi, config: Config) -> None:
    owner = await _owner(market, kube, config.namespaces)
    if owner is None:
        return
    namespace = owner["metadata"].get("namespace")
    if owner["metadata"].get("deletionTimestamp"):
        raise RetryError(f"market {market.name} in namespace {namespace} is being retired; "
                         "waiting for its name", delay=5)
    raise NameTakenError(f"market {market.name} already exists in namespace "
                             f"{namespace}; market names are cluster-wide")


async def _apply_children(market: Market, kube: KubeApi, config: Config) -> list[str]:
    done = []
    for build in CHILDREN:
        desired = build(market, config)
        resource = BY_KIND[desired["kind"]]
        name = desired["metadata"]["name"]
        actual = await kube.get(resource, market.namespace, name)
        if actual is None:
            await kube.create(resource, market.namespace, desired)
            done.append(f"created {desired['kind']} {name}")
            continue
        wanted = {"metadata": {key: desired["metadata"][key]
                               for key in ("labels", "ownerReferences")},
                  "spec": desired["spec"]}
        stale = removals(desired, actual) if desired["kind"] == "StatefulSet" else {}
        if stale or not is_subset(wanted, actual):
            await kube.patch(resource, market.namespace, name, _merged(wanted, stale))
            done.append(f"updated {desired['kind']} {name}")
    return done


def _merged(patch: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Two merge patches as one."""
    merged = dict(patch)
    for key, value in more.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, dict)
                       and isinstance(merged.get(key), dict) else value)
    return merged


async def _apply_definition(market: Market, exchange: Exchange, notify: Notify) -> list[str]:
    """Write the definition; a mode change also goes into the command stream, so it takes
    effect between two orders, the same way in every replica and every replay."""
    done = []
    wanted = definition(market)
    mode = wanted["tradingMode"]
    previous = await exchange.definition(market.name)
    if await exchange.has_command_stream(market.name):
        lease = await exchange.lease(market.name)
        effective = next((report.mode for report in await exchange.replicas(market.name)
                          if lease is not None and report.replica == lease.holder
                          and report.role == "leader"), None)
        changed = previous is not None and previous.get("tradingMode") != mode
        if previous is None or changed or (effective is not None and effective != mode):
            sequence, new = await exchange.sequence(
                market.name, {"type": "setTradingMode", "mode": mode},
                f"{market.name}:mode:{market.uid}:{market.generation}")
            if new:
                notify("Normal", "TradingModeChanged",
                       f"trading mode {mode} sequenced at command {sequence}")
                done.append(f"sequenced trading mode {mode} at {sequence}")
    if previous != wanted:
        await exchange.put_definition(market.name, wanted)
        done.append("wrote the definition")
    return done


async def observe(market: Market, exchange: Exchange, previous: dict[str, Any], *,
                  paused: bool = False, deleting: bool = False) -> Change:
    observation = Observation(
        generation=market.generation, replicas=market.spec.replicas,
        mode=str(market.spec.trading_mode), reports=await exchange.replicas(market.name),
        lease=await exchange.lease(market.name), paused=paused, deleting=deleting,
        selector=",".join(f"{key}={value}" for key, value in selector(market).items()))
    return compute(observation, previous, timestamp())


async def switch_over(market: Market, target: str, exchange: Exchange,
                      notify: Notify) -> None:
    try:
        answer = await exchange.switchover(market.name, target)
    except UnansweredError as exc:
        raise RetryError(f"no leader answers the switchover: {exc}", delay=2) from exc
    except RefusedError as exc:
        notify("Warning", "SwitchoverRefused", str(exc))
        return
    notify("Normal", "SwitchoverRequested", f"{answer.get('from')} hands the lead to "
           f"{answer.get('to')}")


async def finalize(market: Market, kube: KubeApi, exchange: Exchange, config: Config,
                   notify: Notify, runtime: datetime.timedelta,
                   retired: dict[str, int]) -> None:
    """Retire the market, then delete its children and definition.

    ``retired`` is ``status.retirement``: the sequences of the final admin commands once
    sequenced, kept in the status so a retry long after the stream's duplicate window
    still sequences them once, and the command the final snapshot was taken through, so
    a retry after it (a child's deletion failed) neither waits nor asks for it again. A
    Market that never owned its name (a duplicate in another namespace) retires nothing:
    the market is the other Market's."""
    if await _owner(market, kube, config.namespaces) is not None:
        notify("Normal", "NotRetired", f"market {market.name} belongs to another namespace; "
               "only this Market goes")
        return
    patient = runtime.total_seconds() < config.final_snapshot_timeout
    if await exchange.has_command_stream(market.name):
        await _retire(market, kube, exchange, notify, patient, dict(retired))
    for build in reversed(CHILDREN):
        desired = build(market, config)
        await kube.delete(BY_KIND[desired["kind"]], market.namespace,
                          desired["metadata"]["name"])
    notify("Normal", "ChildrenDeleted", "engines, service and disruption budget deleted")
    await exchange.delete_definition(market.name)


async def _retire(market: Market, kube: KubeApi, exchange: Exchange, notify: Notify,
                  patient: bool, retired: dict[str, int]) -> None:
    steps = (("cancelOnly", {"type": "setTradingMode", "mode": "cancelOnly"}, "CancelOnly",
              "the market went cancel-only at command {}"),
             ("cancelAll", {"type": "cancelAll", "account": None}, "OrdersCanceled",
              "every open order canceled at command {}"))
    for step, command, reason, message in steps:
        if step in retired:
            continue
        sequence, new = await exchange.sequence(market.name, command,
                                                f"{market.name}:final-{step}:{market.uid}")
        retired[step] = sequence
        await kube.patch(MARKETS, market.namespace, market.name,
                         {"status": {"retirement": {step: sequence}}}, subresource="status")
        if new:
            notify("Normal", reason, message.format(sequence))
    through = retired["cancelAll"]
    if "finalSnapshot" in retired:
        return
    try:
        leader = await exchange.leader_status(market.name)
        if int(leader.get("publishedThrough", 0)) < through:
            if patient:
                raise RetryError(f"waiting for the leader to publish through command "
                                 f"{through}", delay=1)
            notify("Warning", "CancellationsUnpublished", f"the leader has not published "
                   f"through command {through}; the command stream keeps the cancellations")
    except ExchangeError as exc:  # no leader, or one that cannot say
        if patient:
            raise RetryError(f"no leader to publish the cancellations: {exc}", delay=2) from exc
        notify("Warning", "NoLeader", "no leader published the cancellations; the command "
               "stream keeps them for the next engine of this market")
    try:
        snapshot = await exchange.final_snapshot(market.name, through)
    except ExchangeError as exc:
        if patient:
            raise RetryError(f"no recorder took the final snapshot: {exc}", delay=5) from exc
        notify("Warning", "FinalSnapshotSkipped", f"{exc}; the market is deleted without a "
               "final snapshot (its streams and history remain)")
        return
    await kube.patch(MARKETS, market.namespace, market.name,
                     {"status": {"retirement": {"finalSnapshot": through}}},
                     subresource="status")
    notify("Normal", "FinalSnapshot", f"snapshot at command {snapshot.get('sequence')}, "
           f"state hash {snapshot.get('stateHash')}")


def paused(annotations: dict[str, str]) -> bool:
    return annotations.get(PAUSE_ANNOTATION, "").lower() in ("true", "1", "yes")
