"""A Market's status, computed from what its replicas publish: a pure function.

The replicas elect their leader and report themselves to ``tp-replicas`` every second;
the operator only reads. Conditions, in Kubernetes' sense:

- ``Available``: a leader is serving (orders are matched);
- ``Ready``: available, every replica the spec asks for has caught up, and the market
  trades in the mode its spec says;
- ``Progressing``: the operator or the market is still moving towards the spec (a new
  generation, replicas catching up, a mode change on its way);
- ``Degraded``: something the spec asks for is missing: no leader, or fewer ready
  replicas than asked (a failover would have nowhere to go).

plus two that other steps write and the status reading keeps as they are: ``Accepted``
(the Market can be made as written: a valid spec, an allowed image, a name of its own)
and ``Retiring`` (protection.py).

Every condition has metav1.Condition's shape (``crd.Condition``): ``observedGeneration``
is the Market's generation it was computed for, and ``lastTransitionTime`` changes only
when its status does.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tradeplane_operator.crd import MAX_MESSAGE
from tradeplane_operator.exchange import Lease, ReplicaReport

CONDITIONS = ("Ready", "Available", "Progressing", "Degraded")
"""What a status reading computes."""
ACCEPTED = "Accepted"
"""Written when a generation is applied (``True``) or refused (``False``, with why)."""


@dataclass(frozen=True)
class Observation:
    """Everything the status is made from, read at one moment."""

    generation: int
    replicas: int
    """Replicas the spec asks for."""
    mode: str
    """The trading mode the spec asks for."""
    reports: Sequence[ReplicaReport]
    lease: Lease | None
    paused: bool = False
    deleting: bool = False
    selector: str = ""
    """The engine pods' label selector, for the scale subresource."""


@dataclass(frozen=True)
class Change:
    """The status to write, and what happened since the last one (for an Event)."""

    status: dict[str, Any]
    leader_change: tuple[str, str, str] | None = None
    """``(type, reason, message)`` when the lead moved: a ``Failover`` (Warning) or a
    planned ``Switchover`` (Normal)."""


def timestamp(nanoseconds: int | None = None) -> str:
    moment = (datetime.datetime.now(tz=datetime.UTC) if nanoseconds is None else
              datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.UTC))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def compute(observation: Observation, previous: dict[str, Any], now: str) -> Change:
    reports = list(observation.reports)
    lead = _lead(reports, observation.lease, previous)
    ready = [report for report in reports if report.ready]
    status = _figures(observation, previous, reports, len(ready), lead)
    health = _Health(
        available=lead.leader is not None and lead.leader.ready,
        all_ready=len(ready) >= observation.replicas,
        mode_applied=status["tradingMode"] == observation.mode,
        reconciled=previous.get("observedGeneration") == observation.generation,
        replicas_text=f"{len(ready)}/{observation.replicas} replicas ready",
    )
    status["phase"] = _phase(observation, bool(reports), status["lastLeader"], health)
    wanted = _wanted(observation, lead, bool(reports), status, health)
    status["conditions"] = _conditions(wanted, observation.generation, previous, now)
    return Change(status=status, leader_change=_leader_change(lead, previous))


@dataclass(frozen=True)
class _Lead:
    """Who leads, by the replicas' reports and the lease, and how far the epoch moved."""

    leader: ReplicaReport | None
    deposed: list[str]
    """Replicas that still report as leaders although the lease is another's."""
    old_epoch: int
    epoch: int
    planned: bool
    """The lease was handed over (a switchover), not taken after a loss (a failover)."""


@dataclass(frozen=True)
class _Health:
    """What the phase and the conditions are decided from."""

    available: bool
    all_ready: bool
    mode_applied: bool
    reconciled: bool
    replicas_text: str


def _lead(reports: list[ReplicaReport], lease: Lease | None,
          previous: dict[str, Any]) -> _Lead:
    leaders = [report for report in reports if report.role == "leader"]
    leader = max(leaders, key=lambda report: report.epoch, default=None)
    deposed = [report.replica for report in leaders
               if lease is not None and report.replica != lease.holder]
    if leader is not None and leader.replica in deposed:
        leader = None  # a deposed leader's last report, not yet expired
    # The epoch moves on when the new leader has said so; a lease taken by a replica
    # whose report has not arrived yet is counted on the next reading.
    old_epoch = int(previous.get("epoch") or 0)
    epoch = lease.epoch if lease is not None and leader is not None else old_epoch
    planned = lease is not None and lease.taken == "handover"
    return _Lead(leader, deposed, old_epoch, epoch, planned)


def _figures(observation: Observation, previous: dict[str, Any],
             reports: list[ReplicaReport], ready: int, lead: _Lead) -> dict[str, Any]:
    """The status's figures: replicas, leader, epoch, sequence, lag and changes of lead."""
    leader, epoch, old_epoch = lead.leader, lead.epoch, lead.old_epoch
    failovers = int(previous.get("failovers") or 0)
    switchovers = int(previous.get("switchovers") or 0)
    if not old_epoch:
        failovers = max(0, epoch - 1)  # changes before the operator watched: counted here
    elif epoch > old_epoch and lead.planned:
        switchovers += epoch - old_epoch
    elif epoch > old_epoch:
        failovers += epoch - old_epoch
    failover_times = [report.last_failover for report in reports if report.last_failover]

    lag: dict[str, int | None] = dict.fromkeys(previous.get("replicaLag") or {})
    lag.update({report.replica: report.lag for report in reports})  # None: a replica gone
    status: dict[str, Any] = {
        "replicas": len(reports),
        "readyReplicas": ready,
        "selector": observation.selector,
        "leader": leader.replica if leader is not None else None,
        "lastLeader": (leader.replica if leader is not None else
                       previous.get("leader") or previous.get("lastLeader")),
        "epoch": epoch,
        "lastSequence": max((report.sequence for report in reports), default=0),
        "tradingMode": leader.mode if leader is not None else None,
        "replicaLag": lag,
        "failovers": failovers,
        "switchovers": switchovers,
    }
    if epoch > old_epoch and not lead.planned and failovers and failover_times:
        status["lastFailoverTime"] = timestamp(max(failover_times))
    return status


def _phase(observation: Observation, reporting: bool, last_leader: str | None,
           health: _Health) -> str:
    if observation.deleting:
        return "Terminating"
    if not reporting and not last_leader:
        return "Pending"  # nothing has run yet
    if not health.available:
        return "Unavailable"
    if not health.all_ready:
        return "Degraded"
    return "Running"


def _wanted(observation: Observation, lead: _Lead, reporting: bool, status: dict[str, Any],
            health: _Health) -> dict[str, tuple[bool | None, str, str]]:
    """Each condition's ``(status, reason, message)``; ``None`` is ``Unknown``."""
    available, all_ready = health.available, health.all_ready
    mode_applied, replicas_text = health.mode_applied, health.replicas_text
    effective_mode = status["tradingMode"]
    if available and lead.leader is not None:
        availability = ("LeaderServing", f"{lead.leader.replica} leads at epoch {lead.epoch}")
    else:
        availability = ("NoLeader", "no replica leads the market")
    if not (available and all_ready):
        readiness = ("ReplicasNotReady", replicas_text)
    elif not mode_applied:
        readiness = ("ModePending", f"trading {effective_mode}, the spec says "
                                    f"{observation.mode}")
    else:
        readiness = ("AllReplicasReady", f"{replicas_text}, trading {effective_mode}")
    if observation.paused:
        progress = ("Paused", "reconciliation is paused by annotation")
    elif not health.reconciled:
        progress = ("Reconciling", f"generation {observation.generation} is being applied")
    elif not all_ready or not mode_applied:
        progress = ("Converging", readiness[1])
    else:
        progress = ("Stable", "the market is as its spec says")
    if not reporting and status["lastLeader"]:
        degradation = ("NoReplicas", f"no replica reports; {status['lastLeader']} led last")
    elif reporting and not available:
        degradation = ("NoLeader", "replicas run but none leads")
    elif reporting and not all_ready:
        degradation = ("ReplicasMissing", f"{replicas_text}: a failover has fewer "
                                          "standbys to go to")
    else:
        degradation = ("AsExpected", replicas_text)
    return {
        "Available": (available, *availability),
        "Ready": (available and all_ready and mode_applied, *readiness),
        "Progressing": (None if observation.paused else
                        not health.reconciled or not all_ready or not mode_applied, *progress),
        "Degraded": (degradation[0] != "AsExpected", *degradation),
    }


def condition(kind: str, value: bool | None, reason: str, message: str, generation: int,
              previous: Iterable[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """A condition in metav1.Condition's shape; its transition time moves only with its
    status (``None`` is ``Unknown``)."""
    state = "Unknown" if value is None else "True" if value else "False"
    old = next((c for c in previous if c.get("type") == kind), {})
    since = old.get("lastTransitionTime") if old.get("status") == state else None
    return {"type": kind, "status": state, "observedGeneration": generation,
            "lastTransitionTime": since or now, "reason": reason,
            "message": message[:MAX_MESSAGE]}


def with_condition(conditions: Iterable[Mapping[str, Any]],
                   new: dict[str, Any]) -> list[dict[str, Any]]:
    """``conditions`` with ``new`` in place of its type's (a list map keyed by type)."""
    kept = [dict(c) for c in conditions]
    for index, old in enumerate(kept):
        if old.get("type") == new["type"]:
            kept[index] = new
            return kept
    return [*kept, new]


def _conditions(wanted: dict[str, tuple[bool | None, str, str]], generation: int,
                previous: dict[str, Any], now: str) -> list[dict[str, Any]]:
    """The status reading's conditions, then the others' (``Accepted``, ``Retiring``)
    as they were."""
    before = list(previous.get("conditions") or [])
    ours = [condition(kind, *wanted[kind], generation, before, now) for kind in CONDITIONS]
    return [*ours, *(dict(c) for c in before if c.get("type") not in CONDITIONS)]


def _leader_change(lead: _Lead, previous: dict[str, Any]) -> tuple[str, str, str] | None:
    """A ``Failover`` or ``Switchover`` Event's ``(type, reason, message)``, when the lead
    moved since the last status."""
    old_epoch, epoch = lead.old_epoch, lead.epoch
    if not (old_epoch and epoch > old_epoch and lead.leader is not None):
        return None
    old_leader = (previous.get("leader") or next(iter(lead.deposed), None)
                  or previous.get("lastLeader") or "a lost replica")
    moved = (f"the lead moved from {old_leader} to {lead.leader.replica} "
             f"(epoch {old_epoch} → {epoch})")
    return (("Normal", "Switchover", f"{moved}, as planned") if lead.planned
            else ("Warning", "Failover", moved))
