"""The Kubernetes API as the operator uses it: a few verbs on a few resources.

kopf watches Markets and patches them; this client does the rest (children, status
between handlers) over the same connection kopf logged in with. ``USED`` lists every
resource and verb it can touch, which is what the chart's RBAC grants and no more (a
test compares them).

Errors are ``KubeError`` with the API's status code and reason, so the handlers can
tell a missing object from an overloaded API server.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from tradeplane_operator.crd import GROUP, PLURAL, VERSION
from tradeplane_operator.errors import KubeError


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    def path(self, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        path = self.api
        if self.namespaced and namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


MARKETS = Resource(GROUP, VERSION, PLURAL)
STATEFULSETS = Resource("apps", "v1", "statefulsets")
SERVICES = Resource("", "v1", "services")
DISRUPTION_BUDGETS = Resource("policy", "v1", "poddisruptionbudgets")
BY_KIND = {"StatefulSet": STATEFULSETS, "Service": SERVICES,
           "PodDisruptionBudget": DISRUPTION_BUDGETS}

USED: dict[Resource, frozenset[str]] = {
    MARKETS: frozenset({"get", "list", "watch", "patch"}),
    Resource(GROUP, VERSION, f"{PLURAL}/status"): frozenset({"patch"}),
    STATEFULSETS: frozenset({"get", "create", "patch", "delete", "list", "watch"}),
    SERVICES: frozenset({"get", "create", "patch", "delete", "list", "watch"}),
    DISRUPTION_BUDGETS: frozenset({"get", "create", "patch", "delete", "list", "watch"}),
    Resource("", "v1", "events"): frozenset({"create"}),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False):
        frozenset({"list", "watch"}),
}
"""What the operator does in the API: its own calls below, kopf's watches of Markets and
of the children (to repair a deleted one), kopf's Events and finalizer patches, and
kopf's watch of CRDs (it notices resources that appear). The chart's RBAC grants exactly
this; a test compares them, and another checks every request the operator made in the
tests against it."""

USED_WHEN_NAMESPACED: dict[Resource, frozenset[str]] = {
    Resource("", "v1", "namespaces", namespaced=False): frozenset({"list", "watch"}),
}
"""What an operator limited to some namespaces needs as well: kopf watches the
namespaces to learn when a watched one appears or goes."""

LEASES = Resource("coordination.k8s.io", "v1", "leases")
USED_FOR_LEADER_ELECTION: dict[Resource, frozenset[str]] = {
    LEASES: frozenset({"get", "create", "patch"}),
}
"""What leader election (leadership.py) does, in the operator's own namespace only: the
chart grants it by a Role there, whichever namespaces the operator watches."""


class KubeApi:
    """An aiohttp session to the API server, made from kopf's connection info."""

    def __init__(self, info: kopf.ConnectionInfo,
                 user_agent: str = "tradeplane-operator") -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = (aiohttp.BasicAuth(info.username, info.password or "")
                if info.username else None)
        self.session = aiohttp.ClientSession(
            headers=headers, auth=auth, connector=aiohttp.TCPConnector(ssl=_ssl(info)),
            timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self.session.close()

    async def _call(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/json") -> dict[str, Any] | None:
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(method, self.server + path, json=body,
                                        headers=headers) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400:
                payload = payload if isinstance(payload, dict) else {}
                raise KubeError(response.status, payload.get("reason") or response.reason
                                or "", payload.get("message") or "")
            return payload if isinstance(payload, dict) else None

    async def get(self, resource: Resource, namespace: str | None,
                  name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return await self._call("GET", resource.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, resource: Resource, namespace: str | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        path = resource.path(namespace)
        if field_selector:
            path += f"?fieldSelector={field_selector}"
        return list(((await self._call("GET", path)) or {}).get("items", []))

    async def create(self, resource: Resource, namespace: str | None,
                     body: dict[str, Any]) -> dict[str, Any] | None:
        return await self._call("POST", resource.path(namespace), body)

    async def patch(self, resource: Resource, namespace: str | None, name: str,
                    body: dict[str, Any], subresource: str | None = None
                    ) -> dict[str, Any] | None:
        return await self._call("PATCH", resource.path(namespace, name, subresource), body,
                                "application/merge-patch+json")

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        try:
            await self._call("DELETE", resource.path(namespace, name),
                             {"propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _ssl(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cafile=str(info.ca_path) if info.ca_path else None,
            cadata=_text(info.ca_data))
    if info.certificate_path or info.certificate_data:
        context.load_cert_chain(*_client_certificate(info))
    return context


def _text(data: str | bytes | None) -> str | None:
    return data.decode() if isinstance(data, bytes) else data


def _client_certificate(info: kopf.ConnectionInfo) -> tuple[str, str | None]:
    """Client certificate files (aiohttp's SSL context loads files, not bytes)."""
    import tempfile

    def written(path: Any, data: str | bytes | None, suffix: str) -> str | None:
        if path:
            return str(path)
        if data is None:
            return None
        handle = tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False)  # noqa: SIM115
        with handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        return handle.name

    certificate = written(info.certificate_path, info.certificate_data, ".crt")
    assert certificate is not None
    return certificate, written(info.private_key_path, info.private_key_data, ".key")
