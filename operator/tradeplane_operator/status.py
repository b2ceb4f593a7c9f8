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

``lastTransitionTime`` changes only when a condition's status does.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tradeplane_operator.exchange import Lease, ReplicaReport

CONDITIONS = ("Ready", "Available", "Progressing", "Degraded")


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
    lease = observation.lease
    leaders = [report for report in reports if report.role == "leader"]
    leader = max(leaders, key=lambda report: report.epoch, default=None)
    deposed = [report.replica for report in leaders
               if lease is not None and report.replica != lease.holder]
    if leader is not None and leader.replica in deposed:
        leader = None  # a deposed leader's last report, not yet expired
    ready = [report for report in reports if report.ready]
    # The epoch moves on when the new leader has said so; a lease taken by a replica
    # whose report has not arrived yet is counted on the next reading.
    old_epoch = int(previous.get("epoch") or 0)
    epoch = lease.epoch if lease is not None and leader is not None else old_epoch
    planned = lease is not None and lease.taken == "handover"
    failovers = int(previous.get("failovers") or 0)
    switchovers = int(previous.get("switchovers") or 0)
    if not old_epoch:
        failovers = max(0, epoch - 1)  # changes before the operator watched: counted here
    elif epoch > old_epoch and planned:
        switchovers += epoch - old_epoch
    elif epoch > old_epoch:
        failovers += epoch - old_epoch
    effective_mode = leader.mode if leader is not None else None
    failover_times = [report.last_failover for report in reports if report.last_failover]

    lag: dict[str, int | None] = dict.fromkeys(previous.get("replicaLag") or {})
    lag.update({report.replica: report.lag for report in reports})  # None: a replica gone
    status: dict[str, Any] = {
        "replicas": len(reports),
        "readyReplicas": len(ready),
        "selector": observation.selector,
        "leader": leader.replica if leader is not None else None,
        "lastLeader": (leader.replica if leader is not None else
                       previous.get("leader") or previous.get("lastLeader")),
        "epoch": epoch,
        "lastSequence": max((report.sequence for report in reports), default=0),
        "tradingMode": effective_mode,
        "replicaLag": lag,
        "failovers": failovers,
        "switchovers": switchovers,
    }
    if epoch > old_epoch and not planned and failovers and failover_times:
        status["lastFailoverTime"] = timestamp(max(failover_times))

    available = leader is not None and leader.ready
    all_ready = len(ready) >= observation.replicas
    mode_applied = effective_mode == observation.mode
    reconciled = previous.get("observedGeneration") == observation.generation
    if observation.deleting:
        phase = "Terminating"
    elif not reports and not status["lastLeader"]:
        phase = "Pending"  # nothing has run yet
    elif not available:
        phase = "Unavailable"
    elif not all_ready:
        phase = "Degraded"
    else:
        phase = "Running"
    status["phase"] = phase

    replicas_text = f"{len(ready)}/{observation.replicas} replicas ready"
    if available and leader is not None:
        availability = ("LeaderServing", f"{leader.replica} leads at epoch {epoch}")
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
    elif not reconciled:
        progress = ("Reconciling", f"generation {observation.generation} is being applied")
    elif not all_ready or not mode_applied:
        progress = ("Converging", readiness[1])
    else:
        progress = ("Stable", "the market is as its spec says")
    if not reports and status["lastLeader"]:
        degradation = ("NoReplicas", f"no replica reports; {status['lastLeader']} led last")
    elif reports and not available:
        degradation = ("NoLeader", "replicas run but none leads")
    elif reports and not all_ready:
        degradation = ("ReplicasMissing", f"{replicas_text}: a failover has fewer "
                                          "standbys to go to")
    else:
        degradation = ("AsExpected", replicas_text)
    wanted = {
        "Available": (available, *availability),
        "Ready": (available and all_ready and mode_applied, *readiness),
        "Progressing": (None if observation.paused else
                        not reconciled or not all_ready or not mode_applied, *progress),
        "Degraded": (degradation[0] != "AsExpected", *degradation),
    }
    before = {condition.get("type"): condition for condition in previous.get("conditions", [])}
    conditions = []
    for kind in CONDITIONS:
        value, reason, message = wanted[kind]
        state = "Unknown" if value is None else "True" if value else "False"
        old = before.get(kind, {})
        since = old.get("lastTransitionTime") if old.get("status") == state else None
        conditions.append({"type": kind, "status": state, "reason": reason,
                           "message": message, "lastTransitionTime": since or now})
    status["conditions"] = conditions

    leader_change = None
    old_leader = (previous.get("leader") or next(iter(deposed), None)
                  or previous.get("lastLeader") or "a lost replica")
    if old_epoch and epoch > old_epoch and leader is not None:
        moved = (f"the lead moved from {old_leader} to {leader.replica} "
                 f"(epoch {old_epoch} → {epoch})")
        leader_change = (("Normal", "Switchover", f"{moved}, as planned") if planned
                         else ("Warning", "Failover", moved))
    return Change(status=status, leader_change=leader_change)
