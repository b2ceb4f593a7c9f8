"""What tests/support/kube.py adds to kmock's emulator, checked over HTTP as clients see it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from tests.operator_.harness import CRDS, market_manifest
from tests.support.exchange import run
from tests.support.kube import Cluster, cluster
from tradeplane_operator.crd import crd
from tradeplane_operator.errors import KubeError
from tradeplane_operator.kube import MARKETS, STATEFULSETS, KubeApi

MARKET_PATH = "/apis/tradeplane.dev/v1alpha1/namespaces/default/markets"


async def with_crd(emulated: Cluster) -> KubeApi:
    kube = KubeApi(kopf.ConnectionInfo(server=emulated.url))
    await kube.create(CRDS, None, crd())
    return kube


def test_objects_get_identity_versions_and_generations(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = await with_crd(emulated)
            created = await kube.create(MARKETS, "default", market_manifest())
            assert created is not None
            meta = created["metadata"]
            assert meta["uid"]
            assert meta["generation"] == 1
            assert meta["creationTimestamp"].endswith("Z")
            first = int(meta["resourceVersion"])

            patched = await kube.patch(MARKETS, "default", "sol-usdt",
                                       {"spec": {"replicas": 3}})
            assert patched is not None
            assert patched["metadata"]["generation"] == 2
            assert int(patched["metadata"]["resourceVersion"]) > first
            labelled = await kube.patch(MARKETS, "default", "sol-usdt",
                                        {"metadata": {"labels": {"a": "b"}}})
            assert labelled is not None
            assert labelled["metadata"]["generation"] == 2  # metadata is not the spec

            # The status subresource: the object ignores status, /status only takes it.
            await kube.patch(MARKETS, "default", "sol-usdt", {"status": {"phase": "X"}})
            await kube.patch(MARKETS, "default", "sol-usdt",
                             {"status": {"phase": "Running"}, "spec": {"replicas": 5}},
                             subresource="status")
            now = await kube.get(MARKETS, "default", "sol-usdt")
            assert now is not None
            assert now["status"] == {"phase": "Running"}
            assert now["spec"]["replicas"] == 3

            with pytest.raises(KubeError) as conflict:
                await kube.create(MARKETS, "default", market_manifest())
            assert (conflict.value.status, conflict.value.reason) == (409, "AlreadyExists")
            with pytest.raises(KubeError) as missing:
                await kube.patch(MARKETS, "default", "nope", {"spec": {}})
            assert (missing.value.status, missing.value.reason) == (404, "NotFound")

            # kopf's JSON patch, guarded by a test of the resourceVersion.
            stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                     {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
            async with aiohttp.ClientSession() as session, session.patch(
                    emulated.url + MARKET_PATH + "/sol-usdt", data=json.dumps(stale),
                    headers={"Content-Type": "application/json-patch+json"}) as response:
                assert response.status == 422
                assert (await response.json())["reason"] == "Invalid"
            await kube.close()
    run(scenario())


def test_lists_and_watches_resume_from_a_resource_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = await with_crd(emulated)
            await kube.create(MARKETS, "default", market_manifest("a-usdt"))
            async with aiohttp.ClientSession() as session:
                async with session.get(emulated.url + MARKET_PATH) as response:
                    listing = await response.json()
                assert listing["kind"] == "MarketList"
                assert listing["apiVersion"] == "tradeplane.dev/v1alpha1"
                assert [item["metadata"]["name"] for item in listing["items"]] == ["a-usdt"]
                since = listing["metadata"]["resourceVersion"]

                await kube.create(MARKETS, "default", market_manifest("b-usdt"))
                await kube.patch(MARKETS, "default", "a-usdt", {"spec": {"replicas": 4}})
                await kube.delete(MARKETS, "default", "b-usdt")
                events: list[dict[str, Any]] = []
                async with session.get(emulated.url + MARKET_PATH, params={
                        "watch": "true", "resourceVersion": since,
                        "timeoutSeconds": "1"}) as response:
                    assert response.headers["Content-Type"].startswith("application/json")
                    async for line in response.content:
                        events.append(json.loads(line))
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
                ("ADDED", "b-usdt"), ("MODIFIED", "a-usdt"), ("DELETED", "b-usdt")]
            versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
            assert versions == sorted(versions)
            assert versions[0] > int(since)
            await kube.close()
    run(scenario())


def test_a_new_crd_is_discoverable_and_owners_take_their_children(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated, aiohttp.ClientSession() as session:
            async with session.get(emulated.url + "/apis/tradeplane.dev/v1alpha1") as response:
                assert response.status == 404
            kube = await with_crd(emulated)
            async with session.get(emulated.url + "/apis/tradeplane.dev/v1alpha1") as response:
                discovered = await response.json()
            markets = next(r for r in discovered["resources"] if r["name"] == "markets")
            assert markets["kind"] == "Market"
            assert markets["shortNames"] == ["mkt"]
            assert markets["namespaced"] is True
            assert {r["name"] for r in discovered["resources"]} == {
                "markets", "markets/status", "markets/scale"}

            owner = await kube.create(MARKETS, "default", market_manifest())
            assert owner is not None
            await kube.create(STATEFULSETS, "default", {
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {
                    "name": "child", "ownerReferences": [{
                        "apiVersion": "tradeplane.dev/v1alpha1", "kind": "Market",
                        "name": "sol-usdt", "uid": owner["metadata"]["uid"]}]},
                "spec": {"replicas": 1}})
            await kube.delete(MARKETS, "default", "sol-usdt")
            await asyncio.sleep(0)
            assert emulated.get("statefulsets", "child") is None
            await kube.close()
    run(scenario())


def test_a_fault_fails_one_request_then_is_used_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as emulated:
            kube = await with_crd(emulated)
            await kube.create(MARKETS, "default", market_manifest())
            emulated.emulator.faults.append(("DELETE", "markets", 500))
            with pytest.raises(KubeError) as failed:
                await kube.delete(MARKETS, "default", "sol-usdt")
            assert (failed.value.status, failed.value.reason) == (500, "InternalError")
            assert emulated.emulator.faults == []
            assert await kube.get(MARKETS, "default", "sol-usdt") is not None  # untouched
            assert await kube.delete(MARKETS, "default", "sol-usdt") is True
            assert await kube.get(MARKETS, "default", "sol-usdt") is None
            await kube.close()
    run(scenario())
