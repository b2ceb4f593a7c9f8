"""Leaving on SIGTERM: a leader hands its lease to a caught-up standby, then exits.

Kubernetes stops a pod with SIGTERM, waits its grace period (30 s for engines), then
sends SIGKILL. A leader that simply died would leave its market without a leader until
the lease lapsed, and the operator would count a failover; every rolling update and
node drain would be one. Instead the leader names the standby that is least behind
and ready in the lease, between two batches (a planned switchover, counted as one),
and only then exits. A standby has nothing to hand over and exits at once.

Candidates come from the replicas' status reports in ``tp-replicas`` (a second old at
most); each is asked again, on its own status subject, before it is named.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tradeplane_engine.connection import NATS_ERRORS
from tradeplane_engine.wire import REPLICAS_BUCKET, bucket_key_prefix, bucket_stream
from tradeplane_shared.metrics import UNTRUSTED_SKIPPED

if TYPE_CHECKING:
    from tradeplane_engine.service.market import MarketService

log = logging.getLogger(__name__)

LEAVE_WITHIN = 10.0
"""Seconds a leader spends finding a standby to hand over to before it exits anyway (a
third of the engines' grace period)."""


class _Report(msgspec.Struct):
    market: str
    replica: str
    role: str
    ready: bool
    lag: int = 0


async def standbys(js: JetStreamContext, replicas: KeyValue, market: str,
                   leaving: str, component: str = "engine") -> list[str]:
    """The market's ready standbys other than ``leaving``, least behind first, as their
    last reports say. A report that is not one (anyone with access to the bucket may
    have written it) is skipped, logged and counted for ``component``.

    The keys come from the bucket's stream subjects under ``<market>.`` (nats-py's
    ``keys(filters=...)`` matches substrings, and a KV watch's "no more values" marker
    can come before values on their way), each value from a direct read."""
    prefix = bucket_key_prefix(REPLICAS_BUCKET)
    info = await js.stream_info(bucket_stream(REPLICAS_BUCKET),
                                subjects_filter=f"{prefix}{market}.*")
    found: list[tuple[int, str]] = []
    for subject in info.state.subjects or {}:
        key = subject[len(prefix):]
        try:
            entry = await replicas.get(key)
            report = msgspec.json.decode(entry.value or b"", type=_Report)
        except KeyNotFoundError:
            continue  # expired meanwhile
        except msgspec.DecodeError as exc:
            log.warning("market %s: replica report %s is not a report (%s); skipped",
                        market, key[:80], str(exc)[:200])
            UNTRUSTED_SKIPPED.labels(component, "replica report").inc()
            continue
        if (report.market == market and report.replica != leaving
                and report.role == "standby" and report.ready):
            found.append((report.lag, report.replica))
    return [replica for _, replica in sorted(found)]


async def leave(service: MarketService) -> None:
    """Hand the lead to a caught-up standby if this replica leads (within
    ``LEAVE_WITHIN`` seconds); the process exits after this either way."""
    if not service.leading or service.lease is None or service.replicas is None:
        return
    try:
        async with asyncio.timeout(LEAVE_WITHIN):
            for target in await standbys(service.js, service.replicas, service.market,
                                          service.replica):
                refusal = await service.hand_over(target)
                if refusal is None:
                    log.info("market %s: leaving; %s leads next", service.market, target)
                    return
                log.warning("market %s: leaving; not to %s: %s", service.market, target,
                            refusal)
    except NATS_ERRORS as exc:  # TimeoutError included: LEAVE_WITHIN ran out
        log.warning("market %s: leaving without a handover (%s)", service.market,
                    type(exc).__name__)
        return
    log.warning("market %s: leaving with no caught-up standby to hand over to; the lease "
                "lapses and a standby that appears takes over", service.market)
