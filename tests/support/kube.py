"""A Kubernetes API server for tests: kopf's ``kmock`` emulator with what it lacks.

``kmock.KubernetesEmulator`` keeps objects in memory and serves list, watch, get,
create, merge-patch and delete over HTTP. kopf and kubectl need more of a real API
server than that, so this subclass adds it:

- metadata stamping: ``uid``, ``creationTimestamp``, ``generation`` (raised when the
  spec changes), ``generateName``, and one cluster-wide ``resourceVersion`` raised by
  every change and carried by every watch event;
- list kinds (``MarketList``) with the list's ``resourceVersion``; watches that resume
  from a ``resourceVersion``, honour ``timeoutSeconds`` and name/label selectors, and
  stream newline-delimited JSON with a JSON content type (client-go needs it);
- a CustomResourceDefinition that is created becomes discoverable at once, with its
  kind, short names, scope and subresources, and its status subresource is honoured
  (a patch of the object leaves ``status`` alone, a patch of ``/status`` only changes it);
- server-side printing (``as=Table``) with the CRD's printer columns, for ``kubectl get``
  (JSONPath fields and the ``[?(@.type=="Ready")]`` filter conditions are picked with);
- resource quantities of containers stored in their canonical spelling (``"1.5"`` as
  ``"1500m"``), so a drift check that compares spellings patches forever here too;
- standard error reasons (``NotFound``, ``AlreadyExists``, ``Conflict``, ...);
- namespaces to list, and background garbage collection of owned objects;
- Leases (``coordination.k8s.io``), for the operator's leader election: a patch that
  carries a stale ``resourceVersion`` gets 409 ``Conflict``, a second create 409
  ``AlreadyExists``, which is what the election's compare-and-swap relies on.

What it still does not do is said in docs/operator.md: no admission (OpenAPI or CEL
validation, defaulting), no strategic merge, no controllers (nothing runs pods or fills
a StatefulSet's status), no RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from tests.support.kube_http import (
    REASONS,
    StatusError,
    age,
    api_version,
    canonical_quantities,
    json_patch_as_merge,
    json_path,
    json_response,
    longer,
    merge,
    now,
    openapi_path,
    qualified,
    request_resource,
    selected,
    wants_table,
    write_event,
)

BUILTIN: dict[str, tuple[str, bool]] = {
    # "group/version/plural": (kind, namespaced)
    "v1/namespaces": ("Namespace", False),
    "v1/services": ("Service", True),
    "v1/pods": ("Pod", True),
    "v1/events": ("Event", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/secrets": ("Secret", True),
    "v1/serviceaccounts": ("ServiceAccount", True),
    "apps/v1/statefulsets": ("StatefulSet", True),
    "apps/v1/deployments": ("Deployment", True),
    "batch/v1/jobs": ("Job", True),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
    "events.k8s.io/v1/events": ("Event", True),
    "admissionregistration.k8s.io/v1/validatingadmissionpolicies": (
        "ValidatingAdmissionPolicy", False),
    "admissionregistration.k8s.io/v1/validatingadmissionpolicybindings": (
        "ValidatingAdmissionPolicyBinding", False),
    "coordination.k8s.io/v1/leases": ("Lease", True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True),
}
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
CRDS = kmock.resource(group="apiextensions.k8s.io", version="v1",
                      plural="customresourcedefinitions")


@dataclass
class Kind:
    """What the emulator knows of a resource beyond its URL."""

    kind: str
    namespaced: bool
    status_subresource: bool = False
    printer_columns: list[dict[str, Any]] = field(default_factory=list)


class _RecordingBus:
    """Where kmock announces each change: stamps it with the next resourceVersion and
    keeps it, so that watches can resume from any version."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def put(self, event: dict[str, Any]) -> None:
        await self.emulator._record(event)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    kubernetes_minor: int = 33
    """The version ``/version`` reports (1.<minor>): what Helm's capabilities see."""
    _kinds: dict[kmock.resource, Kind] = attrs.field(factory=dict, init=False)
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _version: int = attrs.field(default=0, init=False)
    _log: list[tuple[int, kmock.resource, dict[str, Any]]] = attrs.field(factory=list,
                                                                           init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _current_resource: kmock.resource | None = attrs.field(default=None, init=False)
    """The resource of the change being made (kmock's announcements do not say it)."""
    faults: list[tuple[str, str, int]] = attrs.field(factory=list, init=False)
    """Requests to fail once each: (method, plural, status code). The first request that
    matches one gets that status with its standard reason, and the fault is used up: a
    transient API error, for what must be retried."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _Buses(self)
        for key, (kind, namespaced) in BUILTIN.items():
            self._declare(kmock.resource(key), Kind(kind, namespaced))
        for namespace in ("default", "kube-system"):
            self.objects[kmock.resource("v1/namespaces"), None, namespace] = {
                "apiVersion": "v1", "kind": "Namespace", "metadata": self._stamp_new(
                    {"name": namespace})}

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def served(self) -> int:
        """Requests served so far (what a client costs the API server)."""
        return len(self._requests)

    def _declare(self, resource: kmock.resource, kind: Kind) -> None:
        self._kinds[resource] = kind
        info = self.resources[resource]
        info.kind = kind.kind
        info.namespaced = kind.namespaced
        info.verbs = set(VERBS)
        info.singular = kind.kind.lower()

    def _stamp_new(self, meta: dict[str, Any]) -> dict[str, Any]:
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(self._next_version())
        return meta

    def _next_version(self) -> int:
        self._version = next(self._versions)
        return self._version

    async def _record(self, event: dict[str, Any]) -> None:
        event = copy.deepcopy(event)
        version = self._next_version()
        meta = event["object"].setdefault("metadata", {})
        meta["resourceVersion"] = str(version)
        resource = self._current_resource
        assert resource is not None
        if event["type"] != "DELETED":
            key = (resource, meta.get("namespace"), meta.get("name"))
            if key in self.objects and not self.objects[key].deleted:
                self.objects[key].patch({"metadata": {"resourceVersion": str(version)}})
        self._log.append((version, resource, event))
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()

    # -- requests ----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Namespaces themselves: kmock reads ``/api/v1/namespaces[/<name>]`` as a
        namespace prefix with no resource after it; kopf lists and watches them when it
        serves named namespaces."""
        parts = raw_request.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) > 4:
            return await super().__call__(raw_request)
        await raw_request.read()
        name = parts[3] if len(parts) == 4 else None
        params = dict(raw_request.query)
        action: kmock.action | None = None  # only reading: namespaces are not changed here
        if raw_request.method == "GET":
            action = (kmock.action.WATCH if params.get("watch") == "true" else
                      kmock.action.FETCH if name else kmock.action.LIST)
        request = kmock.Request(
            id=len(self._requests), method=raw_request.method, url=raw_request.url,
            params=params, headers=dict(raw_request.headers), action=action,
            resource=kmock.resource("v1/namespaces"), name=name, raw_request=raw_request)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None or resource.plural is None:
            return await super()._handle(request)
        if resource not in self._kinds and request.action is not None:
            raise StatusError(404, "NotFound", f"the server could not find the requested "
                          f"resource ({resource.plural}.{resource.group})")
        action = request.action
        for fault in self.faults:
            method, plural, code = fault
            if request.method == method and resource.plural == plural:
                self.faults.remove(fault)
                raise StatusError(code, REASONS.get(code, "InternalError"),
                                  f"{method} {plural}: a fault the test asked for")
        if action == kmock.action.WATCH:
            return await self._watch(request)
        if action == kmock.action.LIST:
            return self._list(request)
        if action == kmock.action.FETCH:
            return self._fetch(request)
        if action is None:
            raise StatusError(405, "MethodNotAllowed",
                          f"{request.method} is not supported by this emulator")
        async with self._writes:
            self._current_resource = resource
            before = self._uids()
            if action == kmock.action.CREATE:
                self._prepare_create(request)
            elif action == kmock.action.UPDATE:
                self._prepare_patch(request)
            elif action == kmock.action.DELETE:
                self._require(request)
            response = await super()._handle(request)
            if action == kmock.action.CREATE and resource == CRDS:
                self._register_crd(request.data)
            if action == kmock.action.CREATE:
                response.set_status(201)
            for uid in before - self._uids():
                await self._collect_dependents(uid)
            return response

    def _uids(self) -> set[str]:
        return {obj.get("metadata", {}).get("uid", "") for obj in self.objects.values()
                if not obj.deleted}

    def _require(self, request: kmock.Request) -> kmock.Object:
        resource = request_resource(request)
        key = (resource, request.namespace, request.name or "")
        if key not in self.objects or self.objects[key].deleted:
            raise StatusError(404, "NotFound", f'{qualified(resource)} "{request.name}" '
                               "not found")
        return self.objects[key]

    def _prepare_create(self, request: kmock.Request) -> None:
        data = request.data
        if not isinstance(data, dict):
            raise StatusError(400, "BadRequest", "the body must be a JSON object")
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if not meta.get("name"):
            raise StatusError(422, "Invalid", "metadata.name: Required value")
        resource = request_resource(request)
        kind = self._kinds[resource]
        if kind.namespaced:
            meta["namespace"] = request.namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        key = (resource, meta.get("namespace"), meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise StatusError(409, "AlreadyExists", f'{qualified(resource)} '
                               f'"{meta["name"]}" already exists')
        for stamped in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(stamped, None)
        self._stamp_new(meta)
        if kind.status_subresource:
            data.pop("status", None)
        canonical_quantities(data)

    def _prepare_patch(self, request: kmock.Request) -> None:
        current = self._require(request)
        content_type = request.headers.get("Content-Type", "application/merge-patch+json")
        data = request.data
        if "json-patch" in content_type and isinstance(data, list):
            data = json_patch_as_merge(current.raw, data)
            object.__setattr__(request, "data", data)  # kmock applies request.data
        elif not isinstance(data, dict):
            raise StatusError(415, "UnsupportedMediaType",
                          "a patch must be a JSON merge patch or a JSON patch")
        kind = self._kinds[request_resource(request)]
        meta = data.setdefault("metadata", {}) or {}
        data["metadata"] = meta
        sent_version = meta.pop("resourceVersion", None)
        if sent_version is not None and sent_version != current["metadata"]["resourceVersion"]:
            raise StatusError(409, "Conflict", "the object has been modified; please apply your "
                          "changes to the latest version and try again")
        for stamped in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            meta.pop(stamped, None)
        if request.subresource == "status":
            for key in list(data):
                if key != "status":
                    del data[key]
        elif kind.status_subresource:
            data.pop("status", None)
        canonical_quantities(data)
        if "spec" in data and request.subresource is None:
            merged = merge(copy.deepcopy(current.get("spec") or {}), data["spec"])
            if merged != current.get("spec"):
                data.setdefault("metadata", {})["generation"] = (
                    current["metadata"].get("generation", 1) + 1)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            resource = kmock.resource(group=spec["group"], version=version["name"],
                                      plural=names["plural"])
            subresources = version.get("subresources") or {}
            self._declare(resource, Kind(
                names["kind"], spec.get("scope", "Namespaced") == "Namespaced",
                status_subresource="status" in subresources,
                printer_columns=version.get("additionalPrinterColumns", [])))
            info = self.resources[resource]
            info.singular = names.get("singular", names["kind"].lower())
            info.shortnames = set(names.get("shortNames", []))
            info.categories = set(names.get("categories", []))
            info.subresources = set(subresources)

    async def _collect_dependents(self, owner_uid: str) -> None:
        """Background cascading deletion: what the owner owned goes too (finalizers
        permitting, as in a real cluster)."""
        for (resource, _namespace, _name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            if not any(owner.get("uid") == owner_uid for owner in owners):
                continue
            self._current_resource = resource
            if obj.get("metadata", {}).get("finalizers"):
                obj.patch({"metadata": {"deletionTimestamp": now()}})
                await self._record({"type": "MODIFIED", "object": obj.raw})
                continue
            raw = obj.raw
            obj.delete()
            await self._record({"type": "DELETED", "object": raw})
            await self._collect_dependents(raw.get("metadata", {}).get("uid", ""))

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, Any]:
        """A current Kubernetes (kmock says 1.26, older than the chart supports)."""
        minor = self.kubernetes_minor
        return {"major": "1", "minor": str(minor), "gitVersion": f"v1.{minor}.0",
                "gitCommit": "emulated", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64"}

    def openapi(self) -> None:
        """Serve a minimal OpenAPI v3: what Helm needs to build objects (it reads each
        kind's patch operation and whether it takes ``fieldValidation``); no schemas."""
        self["get /openapi/v3"] << (lambda: {"paths": {
            openapi_path(version): {"serverRelativeURL": f"/openapi/v3/{openapi_path(version)}"}
            for version in {(r.group, r.version) for r in self._kinds}}})
        for group, version in {(r.group, r.version) for r in self._kinds}:
            self[f"get /openapi/v3/{openapi_path((group, version))}"] << partial(
                self._openapi_document, group, version)

    def _openapi_document(self, group: str | None, version: str | None) -> dict[str, Any]:
        paths = {}
        for resource, kind in self._kinds.items():
            if (resource.group, resource.version) != (group, version):
                continue
            prefix = f"/{openapi_path((group, version))}"
            scope = "/namespaces/{namespace}" if kind.namespaced else ""
            paths[f"{prefix}{scope}/{resource.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version,
                                                    "kind": kind.kind},
                "parameters": [{"name": "fieldValidation", "in": "query"}]}}
        return {"openapi": "3.0.0", "info": {"title": "emulated", "version": str(version)},
                "paths": paths, "components": {"schemas": {}}}

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        """Discovery of one group/version; subresources carry no short names (kubectl
        would warn that ``mkt`` is ambiguous)."""
        assert request.resource is not None
        resources = []
        for resource, kind in sorted(self._kinds.items(), key=lambda item: str(item[0])):
            if (resource.group, resource.version) != (request.resource.group,
                                                      request.resource.version):
                continue
            info = self.resources[resource]
            resources.append({"name": resource.plural, "kind": kind.kind,
                              "singularName": info.singular or "", "namespaced": kind.namespaced,
                              "shortNames": sorted(info.shortnames),
                              "categories": sorted(info.categories), "verbs": sorted(VERBS)})
            resources += [{"name": f"{resource.plural}/{sub}", "kind": kind.kind,
                           "singularName": "", "namespaced": kind.namespaced,
                           "verbs": ["get", "patch", "update"]}
                          for sub in sorted(info.subresources)]
        if not resources:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return {"apiVersion": "v1", "kind": "APIResourceList",
                "groupVersion": api_version(request.resource), "resources": resources}

    # -- reading -----------------------------------------------------------------------

    def _matching(self, request: kmock.Request) -> list[dict[str, Any]]:
        return [obj.raw for (resource, namespace, name), obj in self.objects.items()
                if resource == request.resource and not obj.deleted
                and selected(request, namespace, name, obj.raw)]

    def _list(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request_resource(request)
        kind = self._kinds[resource]
        items = sorted(self._matching(request), key=lambda obj: (
            obj["metadata"].get("namespace") or "", obj["metadata"]["name"]))
        if wants_table(request):
            return json_response(self._table(kind, items))
        return json_response({"apiVersion": api_version(resource),
                      "kind": f"{kind.kind}List",
                      "metadata": {"resourceVersion": str(self._version)},
                      "items": items})

    def _fetch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        obj = self._require(request).raw
        if wants_table(request):
            return json_response(self._table(self._kinds[request_resource(request)], [obj]))
        return json_response(obj)

    def _table(self, kind: Kind, items: list[dict[str, Any]]) -> dict[str, Any]:
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name of the object"}]
        paths = []
        for column in kind.printer_columns or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]:
            columns.append({"name": column["name"], "type": column["type"],
                            "format": column.get("format", ""),
                            "priority": column.get("priority", 0),
                            "description": column.get("description", "")})
            paths.append((column["jsonPath"], column["type"]))
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for path, type_ in paths:
                value = json_path(obj, path)
                if type_ == "date" and isinstance(value, str):
                    value = age(value)
                cells.append(value)
            rows.append({"cells": cells, "object": {
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": obj["metadata"]}})
        return {"apiVersion": "meta.k8s.io/v1", "kind": "Table",
                "metadata": {"resourceVersion": str(self._version)},
                "columnDefinitions": columns, "rows": rows}

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        since = request.params.get("resourceVersion") or "0"
        initial = request.params.get("sendInitialEvents") == "true"
        if since == "0" or initial:
            since_version = self._version
            for obj in self._matching(request):
                await write_event(response, {"type": "ADDED", "object": obj})
            if initial:  # a streaming list: say where the initial state ends
                kind = self._kinds[request_resource(request)]
                await write_event(response, {"type": "BOOKMARK", "object": {
                    "apiVersion": api_version(request_resource(request)), "kind": kind.kind,
                    "metadata": {"resourceVersion": str(since_version), "annotations": {
                        "k8s.io/initial-events-end": "true"}}}})
        else:
            since_version = int(since)
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        if self._changed is None:
            self._changed = asyncio.Condition()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                position = 0
                while True:
                    seen = position
                    for version, resource, event in self._log[seen:]:
                        meta = event["object"].get("metadata", {})
                        if (version > since_version and resource == request.resource
                                and selected(request, meta.get("namespace"),
                                              meta.get("name"), event["object"])):
                            await write_event(response, event)
                    position = len(self._log)
                    async with self._changed:
                        await self._changed.wait_for(partial(longer, self._log, position))
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, StatusError):
            code, reason, message = exc.code, exc.reason, exc.message
        elif isinstance(exc, kmock.KubernetesError):
            code = exc.status
            reason = REASONS.get(code, "InternalError")
            message = exc.message or reason
        else:
            return await super()._render_error(exc)
        return json_response({"apiVersion": "v1", "kind": "Status", "metadata": {},
                      "status": "Failure", "code": code, "reason": reason,
                      "message": message}, status=code)


class _Buses(dict):  # type: ignore[type-arg]
    def __init__(self, emulator: Emulator) -> None:
        super().__init__()
        self.bus = _RecordingBus(emulator)

    def __getitem__(self, key: object) -> _RecordingBus:
        return self.bus


# -- running it -----------------------------------------------------------------------

@dataclass
class Cluster:
    """A running emulator, its URL, and a kubeconfig file that points at it."""

    emulator: Emulator
    url: str
    kubeconfig: Path

    def objects(self, plural: str, namespace: str | None = "default"
                ) -> dict[str, dict[str, Any]]:
        """The live objects of a resource (by plural, e.g. ``statefulsets``), by name
        (``namespace`` None: a cluster-scoped resource)."""
        return {name: obj.raw for (resource, ns, name), obj in self.emulator.objects.items()
                if resource.plural == plural and ns == namespace and not obj.deleted}

    def get(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.objects(plural, namespace).get(name)


@contextlib.asynccontextmanager
async def cluster(directory: Path, *, kubernetes_minor: int = 33) -> AsyncIterator[Cluster]:
    """An emulated API server on a free loopback port, and its kubeconfig."""
    async with Emulator(kubernetes_minor=kubernetes_minor) as emulator, \
            kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        kubeconfig = directory / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": "tester", "user": {"token": "test"}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "tester", "namespace": "default"}}],
        }))
        yield Cluster(emulator, url, kubeconfig)
