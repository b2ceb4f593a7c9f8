"""Where kopf keeps its own state on a Market, apart from the annotations users write.

kopf leaves every annotation under its storage prefix out of the changes it reacts to:
the progress storage clears the whole prefix from the diff, and the marker
``<prefix>/kopf-managed`` makes the diff-base storage drop it too. With the users'
prefix (``tradeplane.dev``) that hid ``tradeplane.dev/switchover-to`` and
``tradeplane.dev/paused`` from kopf, so only the periodic drift check acted on them.
kopf's state now lives under a prefix of its own, ``operator.tradeplane.dev``.

Markets handled by an older operator still carry kopf's state under ``tradeplane.dev``.
The diff-base storage ignores it (its marker would hide the users' annotations again)
and removes it with the first configuration it stores. That operator's last handled
configuration is not read: kopf sees each such Market as new once, and runs ``apply``,
the same reconcile a restart runs, which changes nothing already in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

from tradeplane_operator.config import KOPF_PREFIX, PREFIX

DIFFBASE_KEY = "last-handled-configuration"
LAST_HANDLED_ANNOTATION = f"{KOPF_PREFIX}/{DIFFBASE_KEY}"
"""The configuration kopf last handled, as JSON (what a change is compared with)."""
LEGACY_ANNOTATIONS = frozenset(f"{PREFIX}/{name}" for name in (
    "kopf-managed",  # kopf's marker of a prefix it owns
    DIFFBASE_KEY,
    "apply", "retire",  # the progress of the handlers that keep one
    "touch-dummy",  # kopf's nudge to itself after a delay
))
"""kopf's state as an operator before ``KOPF_PREFIX`` kept it, under the users' prefix."""


def progress_storage() -> kopf.AnnotationsProgressStorage:
    return kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last handled configuration under ``KOPF_PREFIX``; it clears out what an
    older operator kept under ``PREFIX``."""

    def __init__(self) -> None:
        super().__init__(prefix=KOPF_PREFIX, key=DIFFBASE_KEY)

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return super().build(body=_without_legacy(body), extra_fields=extra_fields)

    def store(self, *, body: kopf.Body, patch: kopf.Patch,
              essence: kopf.BodyEssence) -> None:
        super().store(body=body, patch=patch, essence=essence)
        for key in LEGACY_ANNOTATIONS & set(body.metadata.annotations):
            patch.metadata.annotations[key] = None


def _without_legacy(body: kopf.Body) -> kopf.Body:
    annotations = body.metadata.annotations
    if not LEGACY_ANNOTATIONS & set(annotations):
        return body
    raw: dict[str, Any] = dict(body)
    raw["metadata"] = {**raw["metadata"], "annotations": {
        key: value for key, value in annotations.items() if key not in LEGACY_ANNOTATIONS}}
    return kopf.Body(cast(kopf.RawBody, raw))
