"""What the API refuses reaches the SmtpRelay's status, against the emulator (which refuses what a cluster does).

A child whose name another owner holds is never adopted (Degraded/NameConflict); a child the apiserver
refuses (400: it cannot even decode it) makes the relay Degraded/ApplyFailed with the API's message, naming the child;
both clear on the next reconcile once fixed. Through the real client over HTTP, as the operator runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crdgen.documents import smtprelay_crd
from relay_operator.kube import Connection, Kube
from relay_operator.relays import reconcile as rec
from relay_operator.settings import Settings
from tests.operator.relays.test_reconcile import Events
from tests.peers.kube import KubeApi

NS = "default"


@pytest.fixture
async def kube(kube_api: KubeApi) -> AsyncIterator[Kube]:
    kube_api.register_crd(smtprelay_crd())
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as client:
        yield client


async def relay(kube: Kube, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "outbound", "namespace": NS},
    }
    return await kube.create({**body, "spec": spec})


async def reread(kube: Kube) -> dict[str, Any]:
    body = await kube.get("SmtpRelay", NS, "outbound")
    assert body is not None
    return body


def degraded(body: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")


async def test_a_foreign_object_of_a_childs_name_is_never_adopted(kube: Kube) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "outbound-config", "namespace": NS},
               "data": {"relay.yaml": "someone else's"}}  # fmt: skip
    await kube.create(foreign)
    await relay(kube, {})
    events = Events()
    result = await rec.reconcile(await reread(kube), kube, Settings(), events)
    problem, held_back = result.problems
    assert held_back.message == "StatefulSet/outbound: held back until its ConfigMap applies"
    assert problem.reason == "NameConflict" and problem.message.startswith("ConfigMap/outbound-config: ")
    assert "not controlled by SmtpRelay outbound" in problem.message
    stored = await kube.get("ConfigMap", NS, "outbound-config")
    assert stored is not None and stored["data"] == foreign["data"] and not stored["metadata"].get("ownerReferences")
    assert await kube.get("StatefulSet", NS, "outbound") is None, "pods never start without their config"
    assert await kube.get("Service", NS, "outbound") is not None, "the children that are ours still converge"
    cond = degraded(await reread(kube))
    assert (cond["status"], cond["reason"]) == ("True", "NameConflict") and "ConfigMap/outbound-config" in cond[
        "message"
    ]
    assert ("Warning", "NameConflict") in [(kind, reason) for kind, reason, _ in events.seen]

    await kube.delete("ConfigMap", NS, "outbound-config")
    result = await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert result.problems == []
    assert degraded(await reread(kube))["status"] == "False"
    assert await kube.get("StatefulSet", NS, "outbound") is not None


async def test_a_child_of_another_relay_is_a_conflict_too(kube: Kube) -> None:
    await relay(kube, {})
    other = await reread(kube)
    token = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "outbound-admin-token", "namespace": NS,
                          "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "elsewhere",
                                               "uid": "0000", "controller": True}]},
             "data": {"token": "c2VjcmV0LXRva2VuLW9mLXNvbWVvbmUtZWxzZQ=="}}  # fmt: skip
    await kube.create(token)
    result = await rec.reconcile(other, kube, Settings(), Events())
    (problem,) = result.problems
    assert problem.reason == "NameConflict" and "controlled by ConfigMap elsewhere" in problem.message
    assert await kube.get("ConfigMap", NS, "outbound-config") is None, "a foreign token stops everything"


async def test_a_child_the_api_refuses_degrades_the_relay_with_the_apis_message(kube: Kube) -> None:
    await relay(kube, {"resources": {"requests": {"cpu": "lots"}}})  # free-form in the CRD, refused in a Pod
    events = Events()
    result = await rec.reconcile(await reread(kube), kube, Settings(), events)
    (problem,) = result.problems
    assert problem.reason == "ApplyFailed" and problem.message.startswith(
        "StatefulSet/outbound: the API refused it (400)"
    )
    assert "quantities must match the regular expression" in problem.message, problem.message
    cond = degraded(await reread(kube))
    assert cond["reason"] == "ApplyFailed" and "(400)" in cond["message"]
    assert await kube.get("ConfigMap", NS, "outbound-config") is not None
    assert ("Warning", "ApplyFailed") in [(kind, reason) for kind, reason, _ in events.seen]

    await kube.patch("SmtpRelay", NS, "outbound", {"spec": {"resources": {"requests": {"cpu": "250m"}}}})
    result = await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert result.problems == [] and degraded(await reread(kube))["status"] == "False"


async def test_optional_children_the_settings_no_longer_want_are_pruned(kube: Kube) -> None:
    await relay(kube, {})
    await rec.reconcile(await reread(kube), kube, Settings(network_policy=True), Events())
    assert await kube.get("NetworkPolicy", NS, "outbound") is not None
    events = Events()
    await rec.reconcile(await reread(kube), kube, Settings(), events)
    assert await kube.get("NetworkPolicy", NS, "outbound") is None
    assert ("Normal", "Pruned") in [(kind, reason) for kind, reason, _ in events.seen]


async def test_a_foreign_object_is_never_pruned(kube: Kube) -> None:
    await relay(kube, {})
    theirs = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "outbound", "namespace": NS}, "spec": {"podSelector": {}}}  # fmt: skip
    await kube.create(theirs)
    await rec.reconcile(await reread(kube), kube, Settings(), Events())
    assert await kube.get("NetworkPolicy", NS, "outbound") is not None
