"""The operator, running in-process with kopf against the emulated API server and a real
nats-server. ``Kubelet`` runs real engine replicas for each StatefulSet the operator
makes, so status, mode changes, switchover and deletion meet real engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import kopf
import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

from tests.operator_.harness import (
    Kubelet,
    World,
    eventually,
    market_manifest,
    operator_world,
    running_operator,
)
from tests.support.exchange import run
from tradeplane_engine.core import Place, Side
from tradeplane_engine.service.lease import leases_bucket, replicas_bucket
from tradeplane_engine.wire import (
    MarketDefinition,
    command_stream,
    command_subject,
    decode_command,
    decode_definition,
    definition_from_manifest,
    encode_command,
)
from tradeplane_operator import handlers
from tradeplane_operator.config import (
    PAUSE_ANNOTATION,
    PREFIX,
    SWITCHOVER_ANNOTATION,
)
from tradeplane_operator.kube import (
    MARKETS,
    STATEFULSETS,
    USED,
    USED_FOR_LEADER_ELECTION,
    USED_WHEN_NAMESPACED,
)
from tradeplane_operator.storage import LAST_HANDLED_ANNOTATION, LEGACY_ANNOTATIONS

ENGINE = "sol-usdt-engine"

GRANTED = {**USED, **USED_FOR_LEADER_ELECTION}
"""What the chart grants an operator that watches every namespace (its ClusterRole, and
the Lease's Role in its own namespace)."""


async def status_of(world: World, name: str = "sol-usdt") -> dict[str, Any]:
    market = await world.market(name)
    return dict((market or {}).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == kind), None)


async def commands(world: World, market: str = "sol-usdt") -> list[Any]:
    """Every command in the market's command stream, in order."""
    js = world.nc.jetstream()
    info = await js.stream_info(command_stream(market))
    result: list[Any] = []
    if not info.state.messages:
        return result
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(command_stream(market), sequence)
        assert message.data is not None
        result.append(decode_command(message.data, sequence, 0))
    return result


async def definition(world: World, market: str = "sol-usdt") -> MarketDefinition | None:
    try:
        kv = await world.nc.jetstream().key_value("tp-markets")
        return decode_definition((await kv.get(market)).value or b"")
    except (NotFoundError, KeyNotFoundError):
        return None


async def serving(world: World, replicas: int = 2) -> None:
    async def ready() -> bool:
        status = await status_of(world)
        return (status.get("readyReplicas") == replicas and bool(status.get("leader"))
                and condition(status, "Ready") == "True")
    await eventually(ready, 30, f"{replicas} ready replicas and a leader")


def test_a_market_becomes_its_children_and_its_definition(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            created = await world.apply(market_manifest())
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets")) == 1,
                             15, "children")
            sts = world.cluster.get("statefulsets", ENGINE)
            service = world.cluster.get("services", ENGINE)
            budget = world.cluster.get("poddisruptionbudgets", ENGINE)
            assert sts is not None
            assert service is not None
            assert budget is not None
            uid = created["metadata"]["uid"]
            for child in (sts, service, budget):
                owner = child["metadata"]["ownerReferences"][0]
                assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
                    "Market", "sol-usdt", uid, True)
                assert child["metadata"]["labels"]["tradeplane.dev/market"] == "sol-usdt"
            spec = sts["spec"]
            assert spec["replicas"] == 2
            assert spec["serviceName"] == ENGINE
            pod = spec["template"]["spec"]
            container = pod["containers"][0]
            assert container["args"][:3] == ["engine", "--market", "sol-usdt"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
            assert pod["topologySpreadConstraints"][0]["topologyKey"] == (
                "topology.kubernetes.io/zone")
            assert {"name": "TRADEPLANE_NATS", "value": world.nats_url} in container["env"]
            anti = pod["affinity"]["podAntiAffinity"]
            [term] = anti["requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["topologyKey"] == "kubernetes.io/hostname"
            assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
            assert service["spec"]["clusterIP"] == "None"
            assert budget["spec"]["maxUnavailable"] == 1

            # The definition engines and gateways read is the Market's spec.
            # (with the CRD's defaults filled in, as the API server would)
            expected = msgspec.structs.replace(definition_from_manifest(market_manifest()),
                                               fees={"makerBps": 0, "takerBps": 0})

            async def defined() -> bool:
                return await definition(world) == expected
            await eventually(defined, 10, "the definition in tp-markets")

            async def observed() -> bool:
                return {"observedGeneration", "phase"} <= set(await status_of(world))
            await eventually(observed, 10, "status")
            status = await status_of(world)
            assert status["observedGeneration"] == 1
            assert status["phase"] == "Pending"  # no replica has reported yet
    run(scenario())


def test_a_spec_change_updates_the_children_and_a_deleted_child_comes_back(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path,
                                  allowed_engine_images=("registry.example/*",)) as world:
            await world.apply(market_manifest())
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets")) == 1,
                             15, "children")
            resources = {"requests": {"cpu": "2", "memory": "2Gi"}}
            await world.patch("sol-usdt", {"spec": {
                "replicas": 3, "engine": {"image": "registry.example/tp:2",
                                          "resources": resources},
                "minNotional": "5"}})

            def updated() -> bool:
                sts = world.cluster.get("statefulsets", ENGINE) or {}
                container = sts["spec"]["template"]["spec"]["containers"][0]
                return bool(sts["spec"]["replicas"] == 3
                        and container["image"] == "registry.example/tp:2"
                        and container["resources"] == resources)
            await eventually(updated, 15, "the StatefulSet follows the spec")
            async def redefined() -> bool:
                stored = await definition(world)
                return stored is not None and stored.min_notional == "5"
            await eventually(redefined, 10, "the definition follows the spec")

            async def observed() -> bool:
                return (await status_of(world)).get("observedGeneration") == 2
            await eventually(observed, 10, "observedGeneration 2")

            old_uid = world.cluster.get("statefulsets", ENGINE)["metadata"]["uid"]  # type: ignore[index]
            assert await world.kube.delete(STATEFULSETS, "default", ENGINE)

            def recreated() -> bool:
                sts = world.cluster.get("statefulsets", ENGINE)
                return sts is not None and sts["metadata"]["uid"] != old_uid
            await eventually(recreated, 10, "the deleted StatefulSet is made again")
            assert world.cluster.get("statefulsets", ENGINE)["spec"]["replicas"] == 3  # type: ignore[index]
    run(scenario())


def test_an_edited_child_is_put_back_by_the_drift_check(tmp_path: Path) -> None:
    """An edit of a child by hand raises no event on the Market: only the periodic
    drift check sees it. The test is about that timer, so it shortens it to 1 s (the
    default, 30 s, would make the test wait that long)."""
    async def scenario() -> None:
        async with operator_world(tmp_path, drift_interval=1.0) as world:
            await world.apply(market_manifest())
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets")) == 1,
                             15, "children")
            await world.kube.patch(STATEFULSETS, "default", ENGINE, {"spec": {"replicas": 1}})
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE)["spec"][  # type: ignore[index]
                "replicas"] == 2, 10, "the edit is repaired")
    run(scenario())


def test_placement_follows_the_market_and_what_it_drops_goes(tmp_path: Path) -> None:
    """A Market's pod template reaches the StatefulSet; taken out of the Market, its
    node selector, priority class and tolerations leave the StatefulSet too (a merge
    patch removes them only when told: ``null`` for a map's keys, an empty list)."""
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            await world.apply(market_manifest())
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets")) == 1,
                             15, "children")
            assert "requiredDuringSchedulingIgnoredDuringExecution" in _engine_pod(world)[
                "affinity"]["podAntiAffinity"]
            await world.patch("sol-usdt", {"spec": {"engine": {"template": {"pod": {
                "nodeSelector": {"pool": "exchange"}, "priorityClassName": "critical",
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "antiAffinity": "preferred"}}}}})

            def placed() -> bool:
                pod = _engine_pod(world)
                return (pod.get("nodeSelector") == {"pool": "exchange"}
                        and pod.get("priorityClassName") == "critical"
                        and pod.get("tolerations") == [{"key": "dedicated",
                                                        "operator": "Exists"}]
                        and "preferredDuringSchedulingIgnoredDuringExecution" in pod[
                            "affinity"]["podAntiAffinity"])
            await eventually(placed, 15, "the StatefulSet placed as the Market says")
            await world.patch("sol-usdt", {"spec": {"engine": {"template": None}}})

            def unplaced() -> bool:
                pod = _engine_pod(world)
                # (the emulator keeps the emptied map; an API server drops it)
                return (not pod.get("nodeSelector") and "priorityClassName" not in pod
                        and not pod.get("tolerations")
                        and list(pod["affinity"]["podAntiAffinity"]) == [
                            "requiredDuringSchedulingIgnoredDuringExecution"])
            await eventually(unplaced, 15, "the Market's placement removed")
    run(scenario())


def _engine_pod(world: World) -> dict[str, Any]:
    sts = world.cluster.get("statefulsets", ENGINE) or {}
    return dict(sts.get("spec", {}).get("template", {}).get("spec", {}))


def _mounted_keys(world: World) -> list[str]:
    return [item["key"] for volume in _engine_pod(world).get("volumes") or []
            for item in volume["secret"]["items"]]


def test_the_engines_credentials_mount_is_made_and_put_back(tmp_path: Path) -> None:
    """With a credentials Secret configured, the engine pods mount its engine key; a
    hand edit that mounts another service's key instead, or drops the mount, is put
    back by the drift check."""
    async def scenario() -> None:
        async with operator_world(tmp_path, drift_interval=1.0,
                                  engine_credentials_secret="tradeplane-nats") as world:
            await world.apply(market_manifest())
            await eventually(lambda: _mounted_keys(world) == ["engine.json"], 15,
                             "the mount")
            pod = _engine_pod(world)
            env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
            assert env["TRADEPLANE_CREDENTIALS"] == "/etc/tradeplane/credentials/engine.json"
            volume = pod["volumes"][0]
            another_key = [{**volume, "secret": {**volume["secret"], "items": [
                {"key": "gateway.json", "path": "engine.json"}]}}]
            for edit in (another_key, None):
                await world.kube.patch(STATEFULSETS, "default", ENGINE, {
                    "spec": {"template": {"spec": {"volumes": edit}}}})
                assert _mounted_keys(world) != ["engine.json"]
                await eventually(lambda: _mounted_keys(world) == ["engine.json"], 10,
                                 "the edit is repaired")
    run(scenario())


def test_status_follows_real_replicas_through_a_failover(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world) as kubelet:
            await world.apply(market_manifest())
            await serving(world)
            status = await status_of(world)
            assert status["phase"] == "Running"
            assert status["epoch"] == 1
            assert status["failovers"] == 0
            assert status["tradingMode"] == "open"
            assert set(status["replicaLag"]) == {f"{ENGINE}-0", f"{ENGINE}-1"}
            assert {c["type"]: c["status"] for c in status["conditions"]} == {
                "Ready": "True", "Available": "True", "Progressing": "False",
                "Degraded": "False", "Accepted": "True"}
            assert {c["observedGeneration"] for c in status["conditions"]} == {1}
            leader = status["leader"]

            await kubelet.kill(leader, restart=False)  # its node is gone

            async def failed_over() -> bool:
                now = await status_of(world)
                return now.get("leader") not in (None, leader) and now.get("epoch") == 2
            await eventually(failed_over, 20, "the standby leads")
            status = await status_of(world)
            assert status["failovers"] == 1
            assert status["lastFailoverTime"].endswith("Z")
            await eventually(lambda: "Failover" in world.reasons("sol-usdt"), 10,
                             "a Failover event")
            failover = next(e for e in world.events("sol-usdt") if e["reason"] == "Failover")
            assert failover["type"] == "Warning"
            assert leader in failover["message"]
            assert status["leader"] in failover["message"]

            async def degraded() -> bool:
                return condition(await status_of(world), "Degraded") == "True"
            await eventually(degraded, 15, "Degraded while a replica is missing")
            status = await status_of(world)
            assert condition(status, "Available") == "True"
            assert condition(status, "Ready") == "False"
            assert status["phase"] == "Degraded"
    run(scenario())


def test_status_follows_what_a_replica_publishes(tmp_path: Path) -> None:
    """No engine at all: the test writes the replicas' reports and the lease itself, as
    an engine."""
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            js = (await world.connect("engine")).jetstream()
            leases = await leases_bucket(js, 1, True)
            reports = await replicas_bucket(js, 1, True)
            await world.apply(market_manifest(replicas=3))

            async def publish(replica: str, **fields: Any) -> None:
                report = {"market": "sol-usdt", "replica": replica, "role": "standby",
                          "epoch": 4, "ready": True, "sequence": 120, "lag": 0,
                          "mode": "open", "publishedThrough": 120, "failovers": 0,
                          "lastFailover": None, **fields}
                await reports.put(f"sol-usdt.{replica}", json.dumps(report).encode())

            await leases.put("sol-usdt", json.dumps({"holder": "a", "epoch": 4}).encode())
            await publish("a", role="leader", failovers=2, lastFailover=1_700_000_000_000_000_000)
            await publish("b", lag=7, sequence=113)
            await publish("c", ready=False, lag=5000, sequence=0)

            async def reported() -> bool:
                return (await status_of(world)).get("lastSequence") == 120
            await eventually(reported, 10, "the reports in the status")
            status = await status_of(world)
            assert status["leader"] == "a"
            assert status["epoch"] == 4
            assert status["failovers"] == 3
            assert status["lastFailoverTime"] == "2023-11-14T22:13:20Z"
            assert status["replicaLag"] == {"a": 0, "b": 7, "c": 5000}
            assert status["readyReplicas"] == 2
            assert condition(status, "Available") == "True"
            assert condition(status, "Degraded") == "True"
            assert condition(status, "Ready") == "False"

            await publish("c", ready=True, lag=0, sequence=120)

            async def ready() -> bool:
                return condition(await status_of(world), "Ready") == "True"
            await eventually(ready, 10, "Ready once every replica has caught up")
            assert condition(await status_of(world), "Degraded") == "False"

            # The lease moves; the new leader's report follows.
            await leases.put("sol-usdt", json.dumps({"holder": "b", "epoch": 5}).encode())
            await publish("a", role="standby")
            await publish("b", role="leader", epoch=5)

            async def moved() -> bool:
                return (await status_of(world)).get("leader") == "b"
            await eventually(moved, 10, "the new leader in the status")
            await eventually(lambda: "Failover" in world.reasons("sol-usdt"), 10,
                             "a Failover event")
            # A replica whose report expires leaves the lag table.
            await reports.delete("sol-usdt.c")

            async def gone() -> bool:
                return "c" not in (await status_of(world)).get("replicaLag", {"c": 0})
            await eventually(gone, 10, "a gone replica leaves replicaLag")
    run(scenario())


def test_a_mode_change_is_a_sequenced_command(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world) as kubelet:
            await world.apply(market_manifest())
            await serving(world)
            js = (await world.connect("gateway")).jetstream()  # orders come from gateways
            await js.publish(command_subject("sol-usdt"), encode_command(Place(
                sequence=0, timestamp=0, account="alice", side=Side.BUY, quantity=100,
                price=10_000)))
            await world.patch("sol-usdt", {"spec": {"tradingMode": "halted"}})

            async def halted() -> bool:
                return (await status_of(world)).get("tradingMode") == "halted"
            await eventually(halted, 15, "the engines trade halted")
            sequenced = await commands(world)
            assert [type(c).__name__ for c in sequenced] == ["Place", "SetTradingMode"]
            assert sequenced[1].mode == "halted"
            for pod in (f"{ENGINE}-0", f"{ENGINE}-1"):
                assert kubelet.service(pod).engine.mode == "halted"
            await eventually(lambda: "TradingModeChanged" in world.reasons("sol-usdt"), 10,
                             "a TradingModeChanged event")
            # Reconciling again (the periodic check) sequences nothing more.
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE) is not None, 1)
            before = len(await commands(world))
            await world.patch("sol-usdt", {"metadata": {"labels": {"touched": "yes"}}})
            await eventually(lambda: _handled(world, '"touched"'), 10,
                             "the label change handled")
            assert len(await commands(world)) == before
    run(scenario())


async def _handled(world: World, fragment: str) -> bool:
    """Whether kopf has handled a change: its last handled configuration has it."""
    market = await world.market("sol-usdt") or {}
    last = (market["metadata"].get("annotations") or {}).get(LAST_HANDLED_ANNOTATION, "")
    return fragment in last


def test_switchover_and_pause_annotations(tmp_path: Path) -> None:
    """The annotations act at once, not at the next drift check (30 s by default, as
    here): each deadline is a few seconds."""
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world):
            await world.apply(market_manifest())
            await serving(world)
            leader = (await status_of(world))["leader"]
            target = next(p for p in (f"{ENGINE}-0", f"{ENGINE}-1") if p != leader)
            await world.patch("sol-usdt", {"metadata": {"annotations": {
                SWITCHOVER_ANNOTATION: target}}})

            async def switched() -> bool:
                market = await world.market("sol-usdt") or {}
                annotations = market["metadata"].get("annotations") or {}
                return ((market.get("status") or {}).get("leader") == target
                        and SWITCHOVER_ANNOTATION not in annotations)
            await eventually(switched, 5, "the lead handed over, the annotation gone")
            await eventually(lambda: "Switchover" in world.reasons("sol-usdt"), 5,
                             "a Switchover event")

            await world.patch("sol-usdt", {"metadata": {"annotations": {
                SWITCHOVER_ANNOTATION: "no-such-replica"}}})
            await eventually(lambda: "SwitchoverRefused" in world.reasons("sol-usdt"), 5,
                             "a refused switchover is reported")

            # Paused: a deleted child stays deleted (unpaused, it comes back at once).
            await world.patch("sol-usdt", {"metadata": {"annotations": {
                PAUSE_ANNOTATION: "true"}}})

            async def paused() -> bool:
                return condition(await status_of(world), "Progressing") == "Unknown"
            await eventually(paused, 5, "Progressing Unknown while paused")
            await world.kube.delete(STATEFULSETS, "default", ENGINE)
            await asyncio.sleep(1.5)  # an observation window, not synchronisation
            assert world.cluster.get("statefulsets", ENGINE) is None
            await world.patch("sol-usdt", {"metadata": {"annotations": {
                PAUSE_ANNOTATION: None}}})
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE) is not None,
                             5, "unpaused: the StatefulSet is back")
            assert world.requests_beyond(GRANTED) == set()
    run(scenario())


def test_a_change_made_while_paused_is_applied_on_resume(tmp_path: Path) -> None:
    """Paused, a spec change is recorded but not applied; resuming applies it at once.
    The drift check (30 s by default, as here) skips a Market whose generation is not
    applied, so only the resume itself can apply it."""
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            await world.apply(market_manifest())
            await eventually(lambda: len(world.cluster.objects("poddisruptionbudgets")) == 1,
                             15, "children")

            async def observed(generation: int) -> bool:
                return (await status_of(world)).get("observedGeneration") == generation
            await eventually(lambda: observed(1), 10, "observedGeneration 1")

            await world.patch("sol-usdt", {"metadata": {"annotations": {
                PAUSE_ANNOTATION: "true"}}})
            await world.patch("sol-usdt", {"spec": {"replicas": 3}})
            await eventually(lambda: _handled(world, '"replicas":3'), 5,
                             "the change recorded while paused")
            await asyncio.sleep(1.0)  # an observation window, not synchronisation
            assert world.cluster.get("statefulsets", ENGINE)["spec"]["replicas"] == 2  # type: ignore[index]
            assert (await status_of(world)).get("observedGeneration") == 1

            await world.patch("sol-usdt", {"metadata": {"annotations": {
                PAUSE_ANNOTATION: None}}})
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE)["spec"][  # type: ignore[index]
                "replicas"] == 3, 5, "resumed: the change made while paused is applied")
            await eventually(lambda: observed(2), 5, "observedGeneration 2")
    run(scenario())


_settings = handlers.settings


def _previous_settings() -> kopf.OperatorSettings:
    """The operator's settings before kopf's state had a prefix of its own."""
    result = _settings()
    result.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    result.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    return result


@contextlib.asynccontextmanager
async def _previous_operator(world: World) -> AsyncIterator[None]:
    """The operator with ``_previous_settings``, in a thread with an event loop of its
    own: kopf, when it stops, cancels every task started in its loop while it ran, and
    the test's engines and NATS subscriptions must outlive it."""
    started: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = (
        queue.SimpleQueue())

    async def operate() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(handlers.run(
            world.config, connection=kopf.ConnectionInfo(server=world.cluster.url),
            stop=stop, ready=ready))
        await asyncio.wait([task, asyncio.create_task(ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        started.put((asyncio.get_running_loop(), stop))
        await task

    with mock.patch.object(handlers, "settings", _previous_settings):
        thread = threading.Thread(target=asyncio.run, args=(operate(),), daemon=True)
        thread.start()
        loop, stop = await asyncio.to_thread(started.get, timeout=20)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive()


def test_an_upgrade_takes_over_markets_the_previous_operator_handled(
        tmp_path: Path) -> None:
    """An operator that kept kopf's state under ``tradeplane.dev`` ran the market; this
    one removes that state, changes nothing already in place, and acts on the
    annotations at once."""
    async def scenario() -> None:
        async with operator_world(tmp_path, start=False) as world:
            async with _previous_operator(world), Kubelet(world):
                await world.apply(market_manifest())
                await serving(world)
            market = await world.market("sol-usdt") or {}
            legacy = {key for key in market["metadata"]["annotations"]
                      if key.startswith(f"{PREFIX}/")}
            assert legacy == {f"{PREFIX}/kopf-managed", f"{PREFIX}/last-handled-configuration"}
            assert legacy <= LEGACY_ANNOTATIONS
            children = {kind: world.cluster.get(kind, ENGINE)["metadata"]["resourceVersion"]  # type: ignore[index]
                        for kind in ("statefulsets", "services", "poddisruptionbudgets")}
            sequenced = len(await commands(world))
            defined = await definition(world)
            events = len(world.events("sol-usdt"))

            async with running_operator(world):
                async def taken_over() -> bool:
                    market = await world.market("sol-usdt") or {}
                    annotations = market["metadata"].get("annotations") or {}
                    return (LAST_HANDLED_ANNOTATION in annotations
                            and not LEGACY_ANNOTATIONS & set(annotations))
                await eventually(taken_over, 10, "kopf's old state replaced by the new")
                # Handled again as new: the same reconcile, with nothing to do.
                assert {kind: world.cluster.get(kind, ENGINE)["metadata"]["resourceVersion"]  # type: ignore[index]
                        for kind in children} == children
                assert len(await commands(world)) == sequenced
                assert await definition(world) == defined
                assert [event["reason"] for event in world.events("sol-usdt")[events:]
                        if event["type"] == "Warning"] == []

                await world.patch("sol-usdt", {"metadata": {"annotations": {
                    PAUSE_ANNOTATION: "true"}}})
                await world.patch("sol-usdt", {"spec": {"replicas": 3}})
                await eventually(lambda: _handled(world, '"replicas":3'), 5,
                                 "the change recorded while paused")
                assert world.cluster.get("statefulsets", ENGINE)["spec"]["replicas"] == 2  # type: ignore[index]
                await world.patch("sol-usdt", {"metadata": {"annotations": {
                    PAUSE_ANNOTATION: None}}})
                await eventually(lambda: world.cluster.get("statefulsets", ENGINE)["spec"][  # type: ignore[index]
                    "replicas"] == 3, 5, "resumed at once")
                assert world.requests_beyond(GRANTED) == set()  # removing the old state too
    run(scenario())


def test_deletion_retires_the_market_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world) as kubelet:
            await world.apply(market_manifest())
            await serving(world)
            gateway = (await world.connect("gateway")).jetstream()  # orders come from gateways
            for account, price in (("alice", 9_900), ("bob", 10_100)):
                await gateway.publish(command_subject("sol-usdt"), encode_command(Place(
                    sequence=0, timestamp=0, account=account,
                    side=Side.BUY if account == "alice" else Side.SELL, quantity=100,
                    price=price)))
            leader = (await status_of(world))["leader"]
            await eventually(lambda: kubelet.service(leader).engine.last_sequence == 2, 10)

            snapshot_requests: list[dict[str, Any]] = []
            children_then: list[int] = []

            async def recorder(msg: Any) -> None:  # what the recorder's snapshotter answers
                snapshot_requests.append(json.loads(msg.data))
                children_then.append(len(world.cluster.objects("statefulsets")))
                await msg.respond(json.dumps({"market": "sol-usdt", "sequence": 4,
                                              "stateHash": "f00d"}).encode())
            recorder_nc = await world.connect("recorder")
            subscription = await recorder_nc.subscribe("tp.recorder.sol-usdt.snapshot",
                                                       cb=recorder)
            await world.unprotect("sol-usdt")
            # The API server fails the first deletion of a child once the final snapshot
            # is taken: the handler runs again, and goes on from where it was.
            world.cluster.emulator.faults.append(("DELETE", "poddisruptionbudgets", 500))
            await world.kube.delete(MARKETS, "default", "sol-usdt")

            async def gone() -> bool:
                return await world.market("sol-usdt") is None
            await eventually(gone, 30, "the Market is deleted")
            await subscription.unsubscribe()

            assert world.cluster.emulator.faults == []  # the deletion was retried
            assert [r for r in world.reasons("sol-usdt") if r in (
                "CancelOnly", "OrdersCanceled", "FinalSnapshot", "ChildrenDeleted")] == [
                "CancelOnly", "OrdersCanceled", "FinalSnapshot", "ChildrenDeleted"]
            # The leader answered that it published the cancellations (no NoLeader).
            assert [event["reason"] for event in world.events("sol-usdt")
                    if event["type"] == "Warning"] == []
            sequenced = await commands(world)
            assert [type(c).__name__ for c in sequenced] == [
                "Place", "Place", "SetTradingMode", "CancelAll"]
            assert sequenced[2].mode == "cancelOnly"
            assert sequenced[3].account is None
            assert snapshot_requests == [{"through": 4}]
            assert children_then == [1]  # the engines were still there for the snapshot
            assert not world.cluster.objects("statefulsets")
            assert not world.cluster.objects("services")
            assert not world.cluster.objects("poddisruptionbudgets")
            assert await definition(world) is None  # gateways no longer route to it
            # The leader published the cancellations before it went: the last events
            # message is command 4's (the engine may have put commands 3 and 4 in one).
            js = world.nc.jetstream()
            events = await js.stream_info("tp-evt-sol-usdt")
            last = await js.get_msg("tp-evt-sol-usdt", events.state.last_seq)
            assert last.headers is not None
            assert last.headers["Tp-Sequence"] == "4"
            # Everything the operator asked of the API is in what its RBAC grants.
            assert world.requests_beyond(GRANTED) == set()
    run(scenario())


def test_a_protected_market_is_held_until_its_annotation_allows_the_deletion(
        tmp_path: Path) -> None:
    """Without admission (this emulator has none; nor a cluster without the chart's
    policy) the delete is stored: the finalizer holds the Market, it keeps trading, and
    the hold outlasts ``final_snapshot_timeout`` without using up the retirement's
    patience."""
    async def scenario() -> None:
        async with operator_world(tmp_path, final_snapshot_timeout=2.0) as world, \
                Kubelet(world):
            await world.apply(market_manifest())
            await serving(world)
            await world.kube.delete(MARKETS, "default", "sol-usdt")

            def held() -> bool:
                return "DeletionProtected" in world.reasons("sol-usdt")
            await eventually(held, 15, "the deletion is held with a Warning")
            market = await world.market("sol-usdt")
            assert market is not None
            assert market["metadata"].get("deletionTimestamp")
            assert "tradeplane.dev/finalizer" in market["metadata"]["finalizers"]
            retiring = next(c for c in market["status"]["conditions"]
                            if c["type"] == "Retiring")
            assert (retiring["status"], retiring["reason"]) == ("False", "DeletionProtected")
            assert "deletion-protection" in retiring["message"]
            assert market["status"]["phase"] == "Terminating"

            async def retried_past_the_timeout() -> bool:
                current = await world.market("sol-usdt")
                progress = (current or {}).get("metadata", {}).get("annotations", {}).get(
                    "operator.tradeplane.dev/retire", "{}")
                return int(json.loads(progress).get("retries") or 0) >= 2
            # Held through two more looks: longer than final_snapshot_timeout.
            await eventually(retried_past_the_timeout, 20, "the hold is looked at again")
            # Nothing of the retirement happened: no command, the engines and the
            # definition are there, and the warning was posted once.
            assert [type(c).__name__ for c in await commands(world)] == []
            assert world.cluster.get("statefulsets", ENGINE) is not None
            assert await definition(world) is not None
            assert world.reasons("sol-usdt").count("DeletionProtected") == 1

            snapshots: list[dict[str, Any]] = []

            async def recorder(msg: Any) -> None:
                snapshots.append(json.loads(msg.data))
                await msg.respond(json.dumps({"market": "sol-usdt", "sequence": 2,
                                              "stateHash": "f00d"}).encode())
            recorder_nc = await world.connect("recorder")
            await recorder_nc.subscribe("tp.recorder.sol-usdt.snapshot", cb=recorder)
            await world.unprotect("sol-usdt")

            async def gone() -> bool:
                return await world.market("sol-usdt") is None
            await eventually(gone, 30, "the Market is retired once unprotected")
            reasons = world.reasons("sol-usdt")
            assert [r for r in reasons if r in (
                "CancelOnly", "OrdersCanceled", "FinalSnapshot", "ChildrenDeleted")] == [
                "CancelOnly", "OrdersCanceled", "FinalSnapshot", "ChildrenDeleted"]
            # Patience counted from the unprotecting, not from the deletion.
            assert "FinalSnapshotSkipped" not in reasons
            assert "NoLeader" not in reasons
            assert snapshots == [{"through": 2}]
            assert world.requests_beyond(GRANTED) == set()
    run(scenario())


def test_deletion_goes_on_without_a_recorder(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path, final_snapshot_timeout=1.0) as world, \
                Kubelet(world):
            await world.apply(market_manifest())
            await serving(world)
            await world.unprotect("sol-usdt")
            await world.kube.delete(MARKETS, "default", "sol-usdt")

            async def gone() -> bool:
                return await world.market("sol-usdt") is None
            await eventually(gone, 30, "the Market is deleted")
            reasons = world.reasons("sol-usdt")
            assert "FinalSnapshotSkipped" in reasons
            assert "ChildrenDeleted" in reasons
            skipped = next(e for e in world.events("sol-usdt")
                       if e["reason"] == "FinalSnapshotSkipped")
            assert skipped["type"] == "Warning"
    run(scenario())


def test_a_market_name_is_cluster_wide(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world, Kubelet(world):
            await world.apply(market_manifest())
            await serving(world)
            other = market_manifest()
            other["metadata"]["namespace"] = "team-b"
            await world.kube.create(MARKETS, "team-b", other)

            def refused() -> bool:
                return any(e["reason"] == "NameTaken" and "cluster-wide" in e["message"]
                           for e in world.cluster.objects("events", "team-b").values())
            await eventually(refused, 15, "the second Market is refused with a reason")
            refusal = await world.kube.get(MARKETS, "team-b", "sol-usdt") or {}
            assert accepted(refusal.get("status") or {}) == ("False", "NameTaken", 1)
            assert world.cluster.get("statefulsets", ENGINE, "team-b") is None

            # Deleting the refused one retires nothing of the market the first one runs.
            before = len(await commands(world))
            await world.unprotect("sol-usdt", "team-b")
            await world.kube.delete(MARKETS, "team-b", "sol-usdt")

            async def gone() -> bool:
                return await world.kube.get(MARKETS, "team-b", "sol-usdt") is None
            await eventually(gone, 15, "the refused Market is deleted")
            assert any(e["reason"] == "NotRetired"
                       for e in world.cluster.objects("events", "team-b").values())
            assert len(await commands(world)) == before
            assert await definition(world) is not None
            assert world.cluster.get("statefulsets", ENGINE) is not None
    run(scenario())


def accepted(status: dict[str, Any]) -> tuple[str, str, int] | None:
    """The ``Accepted`` condition's status, reason and observed generation."""
    return next(((c["status"], c["reason"], c["observedGeneration"])
                 for c in status.get("conditions", []) if c["type"] == "Accepted"), None)


def test_an_image_outside_the_policy_never_runs(tmp_path: Path) -> None:
    """An engine runs with the market's secrets, so a Market naming an image the policy
    does not allow gets nothing made: not new, and not as a change of a running market,
    whose children stay as they were. ``Accepted`` and a Warning Event say why."""
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            await world.apply(market_manifest("eth-usdt", base="ETH", engine={
                "image": "docker.io/library/busybox:latest"}))

            async def refused_new() -> bool:
                return accepted(await status_of(world, "eth-usdt")) == (
                    "False", "ImageNotAllowed", 1)
            await eventually(refused_new, 15, "the new Market refused")
            assert "ImageNotAllowed" in world.reasons("eth-usdt")
            assert world.cluster.get("statefulsets", "eth-usdt-engine") is None
            assert await definition(world, "eth-usdt") is None

            await world.apply(market_manifest())
            async def applied() -> bool:
                return accepted(await status_of(world)) == ("True", "Accepted", 1)
            await eventually(applied, 15, "sol-usdt accepted")
            before = world.cluster.get("statefulsets", ENGINE)
            assert before is not None
            await world.patch("sol-usdt", {"spec": {"tradingMode": "halted", "engine": {
                "image": "ghcr.io/tradeplane/tradeplane-evil:0.1.0"}}})

            async def refused_change() -> bool:
                return accepted(await status_of(world)) == ("False", "ImageNotAllowed", 2)
            await eventually(refused_change, 15, "the change refused")
            message = next(c["message"] for c in (await status_of(world))["conditions"]
                           if c["type"] == "Accepted")
            assert "tradeplane-evil" in message
            assert "image policy" in message
            assert world.cluster.get("statefulsets", ENGINE) == before
            stored = await definition(world)
            assert stored is not None
            assert stored.trading_mode == "open"

            # Another tag of the operator's own image is allowed: the change goes on.
            await world.patch("sol-usdt", {"spec": {"engine": {
                "image": "ghcr.io/tradeplane/tradeplane:0.1.1"}}})
            async def accepted_again() -> bool:
                return accepted(await status_of(world)) == ("True", "Accepted", 3)
            await eventually(accepted_again, 15, "the next generation accepted")
            sts = world.cluster.get("statefulsets", ENGINE) or {}
            assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == (
                "ghcr.io/tradeplane/tradeplane:0.1.1")
    run(scenario())


def test_resources_as_the_api_server_stores_them_are_no_drift(tmp_path: Path) -> None:
    """The emulator stores ``"1.5"`` CPUs as ``"1500m"`` and ``1`` as ``"1"``, as an API
    server does; the drift check (shortened to 0.2 s) must not patch that back."""
    async def scenario() -> None:
        async with operator_world(tmp_path, drift_interval=0.2) as world:
            await world.apply(market_manifest(engine={"resources": {
                "requests": {"cpu": "1.5", "memory": "0.5Gi"}, "limits": {"cpu": 2}}}))
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE) is not None,
                             15, "the StatefulSet")
            sts = world.cluster.get("statefulsets", ENGINE) or {}
            assert sts["spec"]["template"]["spec"]["containers"][0]["resources"] == {
                "requests": {"cpu": "1500m", "memory": "512Mi"}, "limits": {"cpu": "2"}}

            def statefulset_requests(method: str) -> int:
                return sum(1 for request in world.cluster.emulator._requests
                           if request.resource is not None
                           and request.resource.plural == "statefulsets"
                           and request.method == method and request.name == ENGINE)
            reads = statefulset_requests("GET")
            await eventually(lambda: statefulset_requests("GET") >= reads + 5, 15,
                             "five more drift checks")
            assert statefulset_requests("PATCH") == 0
    run(scenario())


def test_an_invalid_name_is_refused_with_an_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with operator_world(tmp_path) as world:
            name = "a" * 41  # the CRD refuses it too; the emulator has no admission
            await world.apply(market_manifest(name))
            await eventually(lambda: "InvalidMarket" in world.reasons(name), 15,
                             "an InvalidMarket event")
            assert not world.cluster.objects("statefulsets")
            assert await definition(world, name) is None
    run(scenario())


def test_an_operator_limited_to_namespaces(tmp_path: Path) -> None:
    """What the chart's `operator.watchNamespaces` gives: the operator sees Markets in
    those namespaces only, and asks nothing cluster-wide of them (a Role allows no more)."""
    async def scenario() -> None:
        async with operator_world(tmp_path, namespaces=("default",)) as world:
            elsewhere = market_manifest("eth-usdt")
            elsewhere["metadata"]["namespace"] = "other"
            await world.kube.create(MARKETS, "other", elsewhere)
            await world.apply(market_manifest())
            await eventually(lambda: world.cluster.get("statefulsets", ENGINE) is not None,
                             15, "the watched namespace's Market served")
            await asyncio.sleep(1.0)  # an observation window for the other namespace
            assert world.cluster.get("statefulsets", "eth-usdt-engine", "other") is None
            cluster_wide = [request for request in world.cluster.emulator._requests
                            if request.resource is not None
                            and request.resource.plural == "markets"
                            and request.namespace is None
                            and request.headers.get("User-Agent") != "tradeplane-tests"]
            assert cluster_wide == []
            assert world.requests_beyond({**GRANTED, **USED_WHEN_NAMESPACED}) == set()
    run(scenario())
