"""Deletion protection: a Market is retired only once its annotation allows it.

Retiring a market cancels every open order, so a deletion is honoured only when the
Market says ``tradeplane.dev/deletion-protection: "false"``; absent, or any other value,
protects it. Admission (the chart's ValidatingAdmissionPolicy) refuses a protected
deletion before it starts. Without it (an older Kubernetes, the policy turned off) the
API server marks the Market deleted, and the operator's finalizer holds it: the
retirement waits, the engines go on trading, and the condition ``Retiring`` says why,
until the annotation is set to ``"false"``.

The condition also dates the retirement: ``Retiring`` turns ``True`` when it begins, and
the patience for the final steps (``final_snapshot_timeout``) counts from then, not from
the deletion, which may have waited days for the annotation.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from tradeplane_operator.children import Market
from tradeplane_operator.config import DELETION_PROTECTION_ANNOTATION
from tradeplane_operator.errors import RetryError
from tradeplane_operator.kube import MARKETS, KubeApi
from tradeplane_operator.reconcile import Notify
from tradeplane_operator.status import condition, timestamp, with_condition

CONDITION = "Retiring"
PROTECTED_REASON = "DeletionProtected"
RETRY_DELAY = 5.0
"""Seconds between two looks at the annotation while a deletion is held."""
PROTECTED_MESSAGE = (
    f'deletion held: {DELETION_PROTECTION_ANNOTATION} is not "false", and retiring the '
    "market would cancel every open order; the engines keep trading. To retire it: "
    f"kubectl annotate market {{name}} {DELETION_PROTECTION_ANNOTATION}=false --overwrite")


def protected(annotations: Mapping[str, str]) -> bool:
    """Only the exact value ``"false"`` lifts the protection: a typo keeps the market."""
    return annotations.get(DELETION_PROTECTION_ANNOTATION, "true") != "false"


def _condition(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == CONDITION), None)


def retiring_for(conditions: Sequence[Mapping[str, Any]], runtime: datetime.timedelta,
                 now: datetime.datetime) -> datetime.timedelta:
    """How long the retirement has run: since ``Retiring`` turned ``True``, else (an
    operator that wrote no such condition began it) the handler's whole runtime."""
    condition = _condition(conditions)
    if condition is None or condition.get("status") != "True":
        return runtime
    began = datetime.datetime.fromisoformat(str(condition["lastTransitionTime"]))
    return max(now - began, datetime.timedelta(0))


async def admit_deletion(market: Market, annotations: Mapping[str, str],
                         conditions: Sequence[Mapping[str, Any]], kube: KubeApi,
                         notify: Notify) -> list[dict[str, Any]]:
    """Hold a protected deletion (``RetryError``: kopf keeps the finalizer and looks
    again); otherwise mark the retirement begun. Returns the conditions as written.

    The Warning event and the condition are written when the hold starts, not on every
    look, so a Market held for a day does not collect an event every few seconds."""
    current = _condition(conditions)
    if protected(annotations):
        message = PROTECTED_MESSAGE.format(name=market.name)
        if current is None or current.get("reason") != PROTECTED_REASON:
            wanted = condition(CONDITION, False, PROTECTED_REASON, message, market.generation,
                               conditions, timestamp())
            await kube.patch(MARKETS, market.namespace, market.name,
                             {"status": {"phase": "Terminating",
                                         "conditions": with_condition(conditions, wanted)}},
                             subresource="status")
            notify("Warning", PROTECTED_REASON, message)
        raise RetryError(message, delay=RETRY_DELAY)
    if current is not None and current.get("status") == "True":
        return [dict(c) for c in conditions]
    wanted = condition(CONDITION, True, "Retiring", "cancel-only, cancel every order, final "
                       "snapshot, then the children go", market.generation, conditions,
                       timestamp())
    written = with_condition(conditions, wanted)
    await kube.patch(MARKETS, market.namespace, market.name,
                     {"status": {"phase": "Terminating", "conditions": written}},
                     subresource="status")
    return written
