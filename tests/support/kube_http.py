"""What the emulated API server says over HTTP: errors with standard reasons, selectors,
merge and JSON patches, JSONPath for printer columns, ages, and JSON responses.

Pure helpers of ``tests/support/kube.py``'s emulator, apart so that each file stays
about one thing: the emulator's behaviour there, the wire details here.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import re
from typing import Any

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock

from tradeplane_operator import quantity


class StatusError(Exception):
    """An API error with a standard reason, rendered as a ``kind: Status``."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists",
            415: "UnsupportedMediaType", 422: "Invalid"}


def request_resource(request: kmock.Request) -> kmock.resource:
    assert request.resource is not None  # only Kubernetes requests get here
    return request.resource


def openapi_path(group_version: tuple[str | None, str | None]) -> str:
    group, version = group_version
    return f"apis/{group}/{version}" if group else f"api/{version}"


def qualified(resource: kmock.resource) -> str:
    """``markets.tradeplane.dev``, as the API server names a resource in its messages."""
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def longer(log: list[Any], length: int) -> bool:
    return len(log) > length


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(timestamp: str) -> str:
    created = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - created).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = merge(base.get(key), value)
    return base


def json_patch_as_merge(current: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """A JSON patch (RFC 6902; kopf removes finalizers with one, guarded by a ``test`` of
    the resourceVersion) as the merge patch that has the same effect."""
    try:
        patched = jsonpatch.apply_patch(current, operations)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise StatusError(422, "Invalid", f"the patch's test failed: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise StatusError(422, "Invalid", f"the patch cannot be applied: {exc}") from exc
    return difference(current, patched)


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    merge: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        if isinstance(value, dict) and isinstance(before.get(key), dict):
            inner = difference(before[key], value)
            if inner:
                merge[key] = inner
        elif before.get(key) != value or key not in before:
            merge[key] = value
    return merge


JSON_PATH_STEP = re.compile(r"""\.(?P<field>[A-Za-z0-9_-]+)"""
                            r"""|\[\?\(@\.(?P<key>[A-Za-z0-9_-]+)==(?P<q>["'])(?P<value>.*?)(?P=q)\)\]""")


def json_path(obj: Any, path: str) -> Any:
    """A printer column's JSONPath: fields (``.status.leader``) and the filter a condition
    is picked with (``.status.conditions[?(@.type=="Ready")].status``); a filter takes
    the first item that matches, as the API server's printer shows it."""
    path = path if path.startswith(".") else f".{path}"
    position = 0
    while position < len(path):
        step = JSON_PATH_STEP.match(path, position)
        if step is None:
            raise ValueError(f"JSONPath {path!r}: not understood at {path[position:]!r}")
        position = step.end()
        if step["field"] is not None:
            obj = obj.get(step["field"]) if isinstance(obj, dict) else None
        else:
            obj = next((item for item in obj if isinstance(item, dict)
                        and str(item.get(step["key"])) == step["value"]), None
                       ) if isinstance(obj, list) else None
    return obj


def canonical_quantities(obj: Any) -> None:
    """Resource quantities of a workload's or pod's containers in the API server's
    spelling (``"1.5"`` is stored as ``"1500m"``, ``2`` as ``"2"``), as it stores them."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    pod = (spec.get("template") or {}).get("spec") if isinstance(spec, dict) else None
    for holder in (spec, pod):
        if not isinstance(holder, dict):
            continue
        for container in [*(holder.get("containers") or []),
                          *(holder.get("initContainers") or [])]:
            resources = container.get("resources") if isinstance(container, dict) else None
            for section in ("requests", "limits"):
                amounts = (resources or {}).get(section)
                if isinstance(amounts, dict):
                    for name, amount in amounts.items():
                        with contextlib.suppress(quantity.QuantityError):
                            amounts[name] = quantity.canonical(amount)


def wants_table(request: kmock.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def selected(request: kmock.Request, namespace: str | None, name: str | None,
              obj: dict[str, Any]) -> bool:
    if request.namespace is not None and namespace != request.namespace:
        return False
    if request.name is not None and name != request.name:
        return False
    for term in filter(None, request.params.get("fieldSelector", "").split(",")):
        path, _, value = term.partition("=")
        if str(json_path(obj, path.strip())) != value.lstrip("="):
            return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, request.params.get("labelSelector", "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def json_response(payload: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.json_response(payload, status=status)


async def write_event(response: aiohttp.web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")
