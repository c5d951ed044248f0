"""The API emulator behaves like a real API server where kopf, kubectl and the kubernetes client look.

Each test talks plain HTTP JSON (urllib, aiohttp), the `kubernetes` client, real kubectl, or a real kopf
operator to the emulator from `tests/peers/kube.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from tests.harness.kopf_thread import KopfThread, fast_settings
from tests.harness.waiting import wait_for
from tests.peers.kube import KubeApi, kubectl

Json = dict[str, Any]
SMR = "/apis/relayfleet.io/v1/namespaces/default/smtprelays"
CM = "/api/v1/namespaces/default/configmaps"
STS = "/apis/apps/v1/namespaces/default/statefulsets"
POD_TEMPLATE = {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
CRD: Json = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "smtprelays.relayfleet.io"},
    "spec": {
        "group": "relayfleet.io",
        "scope": "Namespaced",
        "names": {"plural": "smtprelays", "singular": "smtprelay", "kind": "SmtpRelay", "shortNames": ["smr"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": [
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }
        ],
    },
}


def call(
    api: KubeApi,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = "application/json",
    accept: str = "application/json",
) -> tuple[int, Json]:
    """One plain-HTTP JSON request; returns the status code and the decoded body (also for failures)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        api.url + path,
        data=data,
        method=method,
        headers={"Content-Type": ctype, "Accept": accept, "Authorization": f"Bearer {api.token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ok(api: KubeApi, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Json:
    code, result = call(api, method, path, body, ctype)
    assert code in (200, 201), (code, result)
    return result


def relay(name: str, replicas: int = 1, **extra: Any) -> Json:
    return {
        "apiVersion": "relayfleet.io/v1",
        "kind": "SmtpRelay",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
        **extra,
    }


@pytest.fixture
def crd_api(kube_api: KubeApi) -> KubeApi:
    kube_api.register_crd(CRD)
    return kube_api


def timed_wait(check: Callable[[], Any], timeout: float = 10.0) -> float:
    """Poll until ``check()`` is truthy; return the seconds it took."""
    started = time.monotonic()
    wait_for(check, timeout=timeout, interval=0.005)
    return time.monotonic() - started


# --- plain HTTP JSON ----------------------------------------------------------------------------------------


def test_create_sets_metadata_and_answers_201(crd_api: KubeApi) -> None:
    code, first = call(crd_api, "POST", SMR, relay("r1"))
    assert code == 201
    meta = first["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    _, second = call(crd_api, "POST", CM, {"metadata": {"name": "c1"}, "data": {"a": "b"}})
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])  # one global counter
    assert second["metadata"]["uid"] != meta["uid"]
    assert (second["kind"], second["apiVersion"], second["metadata"]["namespace"]) == ("ConfigMap", "v1", "default")
    code, again = call(crd_api, "POST", SMR, relay("r1"))
    assert (code, again["reason"]) == (409, "AlreadyExists")


def test_generation_counts_spec_changes_only(crd_api: KubeApi) -> None:
    ok(crd_api, "POST", SMR, relay("r1"))
    spec = ok(crd_api, "PATCH", f"{SMR}/r1", {"spec": {"replicas": 3}}, MERGE)
    assert spec["metadata"]["generation"] == 2
    labels = ok(crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert labels["metadata"]["generation"] == 2
    assert int(labels["metadata"]["resourceVersion"]) > int(spec["metadata"]["resourceVersion"])
    status = ok(crd_api, "PATCH", f"{SMR}/r1/status", {"status": {"replicas": 3}}, MERGE)
    assert status["metadata"]["generation"] == 2
    same = ok(crd_api, "PATCH", f"{SMR}/r1", {"spec": {"replicas": 3}}, MERGE)
    assert same["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]  # a no-op is no change


def test_put_replaces_and_conflicts_on_a_stale_resource_version(crd_api: KubeApi) -> None:
    created = ok(crd_api, "POST", SMR, relay("r1", 1, metadata={"name": "r1", "labels": {"x": "y"}}))
    body = relay("r1", 4)
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    replaced = ok(crd_api, "PUT", f"{SMR}/r1", body)
    assert replaced["spec"] == {"replicas": 4} and "labels" not in replaced["metadata"]  # replaced, not merged
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    code, status = call(crd_api, "PUT", f"{SMR}/r1", body)  # the same, now stale, resourceVersion
    assert (code, status["reason"]) == (409, "Conflict")
    code, status = call(crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"resourceVersion": "1"}, "spec": {}}, MERGE)
    assert (code, status["reason"]) == (409, "Conflict")
    code, _ = call(crd_api, "PUT", f"{SMR}/nope", relay("nope"))
    assert code == 404


def test_generate_name(kube_api: KubeApi) -> None:
    names = {ok(kube_api, "POST", CM, {"metadata": {"generateName": "cfg-"}})["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5 and all(n.startswith("cfg-") and len(n) == 9 for n in names)


def test_namespaces_are_served(kube_api: KubeApi) -> None:
    names = [n["metadata"]["name"] for n in ok(kube_api, "GET", "/api/v1/namespaces")["items"]]
    assert {"default", "kube-system"} <= set(names)
    ok(kube_api, "POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    assert ok(kube_api, "GET", "/api/v1/namespaces/team-a")["status"]["phase"] == "Active"
    ok(kube_api, "POST", "/api/v1/namespaces/team-a/configmaps", {"metadata": {"name": "c"}})
    ok(kube_api, "DELETE", "/api/v1/namespaces/team-a")
    assert call(kube_api, "GET", "/api/v1/namespaces/team-a/configmaps/c")[0] == 404  # contents went too


def test_label_and_field_selectors_on_list(kube_api: KubeApi) -> None:
    for name, labels in [("a", {"tier": "mx", "env": "prod"}), ("b", {"tier": "submit"}), ("c", {})]:
        ok(kube_api, "POST", CM, {"metadata": {"name": name, "labels": labels}})
    ok(kube_api, "POST", "/api/v1/namespaces/kube-system/configmaps", {"metadata": {"name": "a"}})

    def names(query: str, path: str = CM) -> list[str]:
        return [i["metadata"]["name"] for i in ok(kube_api, "GET", f"{path}?{query}")["items"]]

    assert names("labelSelector=tier%3Dmx") == ["a"]
    assert names("labelSelector=tier!%3Dmx") == ["b", "c"]
    assert names("labelSelector=tier+in+(mx,submit)") == ["a", "b"]
    assert names("labelSelector=tier+notin+(mx)") == ["b", "c"]
    assert names("labelSelector=env") == ["a"]
    assert names("labelSelector=!env") == ["b", "c"]
    assert names("labelSelector=tier,env%3Dprod") == ["a"]
    assert names("fieldSelector=metadata.name%3Da", "/api/v1/configmaps") == ["a", "a"]
    assert names("fieldSelector=metadata.namespace%3Dkube-system", "/api/v1/configmaps") == ["a"]
    assert names("fieldSelector=metadata.name!%3Da") == ["b", "c"]
    assert call(kube_api, "GET", f"{CM}?labelSelector=tier+in+mx")[0] == 400


async def watch(api: KubeApi, path: str, **params: str) -> list[Json]:
    """Collect a watch stream until the server ends it (by timeoutSeconds)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            api.url + path, params={"watch": "true", **params}, headers={"Authorization": f"Bearer {api.token}"}
        ) as response,
    ):
        assert response.status == 200 and response.content_type == "application/json"
        return [json.loads(line) async for line in response.content if line.strip()]


async def test_watch_resumes_after_a_resource_version_and_honours_timeout(crd_api: KubeApi) -> None:
    await asyncio.to_thread(ok, crd_api, "POST", SMR, relay("old"))
    listed = await asyncio.to_thread(ok, crd_api, "GET", SMR)
    since = listed["metadata"]["resourceVersion"]

    async def changes() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(ok, crd_api, "POST", SMR, relay("new"))
        await asyncio.to_thread(ok, crd_api, "PATCH", f"{SMR}/old", {"spec": {"replicas": 2}}, MERGE)
        await asyncio.to_thread(ok, crd_api, "DELETE", f"{SMR}/new")

    started = time.monotonic()
    async with asyncio.timeout(30):  # the server must end the stream by itself (timeoutSeconds); a hang fails here
        events, _ = await asyncio.gather(watch(crd_api, SMR, resourceVersion=since, timeoutSeconds="1"), changes())
    assert time.monotonic() - started >= 0.9  # not before the timeout: a lower bound cannot flake on a slow machine
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "new"),
        ("MODIFIED", "old"),
        ("DELETED", "new"),
    ]
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(
        events[-2]["object"]["metadata"]["resourceVersion"]
    )

    replay = await watch(crd_api, SMR, timeoutSeconds="1", allowWatchBookmarks="true")  # no resourceVersion
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in replay] == [("ADDED", "old"), ("BOOKMARK", None)]


async def test_namespaced_watch_with_selectors(kube_api: KubeApi) -> None:
    async def changes() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(ok, kube_api, "POST", CM, {"metadata": {"name": "x", "labels": {"app": "relay"}}})
        await asyncio.to_thread(
            ok,
            kube_api,
            "POST",
            "/api/v1/namespaces/kube-system/configmaps",
            {"metadata": {"name": "y", "labels": {"app": "relay"}}},
        )
        await asyncio.to_thread(ok, kube_api, "PATCH", f"{CM}/x", {"metadata": {"labels": {"app": "other"}}}, MERGE)

    rv = str(kube_api.emulator.resource_version)
    (labelled, named, _) = await asyncio.gather(
        watch(kube_api, CM, resourceVersion=rv, timeoutSeconds="1", labelSelector="app=relay"),
        watch(kube_api, "/api/v1/configmaps", resourceVersion=rv, timeoutSeconds="1", fieldSelector="metadata.name=y"),
        changes(),
    )
    # The body had no metadata.namespace: the namespaced watch still sees it; leaving the selector is a DELETED.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in labelled] == [("ADDED", "x"), ("DELETED", "x")]
    assert [(e["type"], e["object"]["metadata"]["namespace"]) for e in named] == [("ADDED", "kube-system")]


def test_status_subresource_is_separate(crd_api: KubeApi) -> None:
    created = ok(crd_api, "POST", SMR, relay("r1", status={"replicas": 99}))
    assert "status" not in created  # dropped on create, like a real server with a status subresource
    status = ok(crd_api, "PATCH", f"{SMR}/r1/status", {"spec": {"replicas": 7}, "status": {"replicas": 1}}, MERGE)
    assert status["status"] == {"replicas": 1} and status["spec"] == {"replicas": 1}
    main = ok(crd_api, "PATCH", f"{SMR}/r1", {"spec": {"replicas": 2}, "status": {"replicas": 50}}, MERGE)
    assert main["status"] == {"replicas": 1} and main["spec"] == {"replicas": 2}
    put = ok(crd_api, "PUT", f"{SMR}/r1/status", {**main, "status": {"replicas": 2, "readyReplicas": 2}})
    assert put["status"] == {"replicas": 2, "readyReplicas": 2}
    sts = {
        "metadata": {"name": "s"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "s"}}, "template": POD_TEMPLATE},
        "status": {"replicas": 5},
    }
    assert "status" not in ok(crd_api, "POST", STS, sts)


def test_scale_subresource(crd_api: KubeApi) -> None:
    ok(crd_api, "POST", SMR, relay("r1", 2))
    ok(crd_api, "PATCH", f"{SMR}/r1/status", {"status": {"replicas": 2, "selector": "app=r1"}}, MERGE)
    scale = ok(crd_api, "GET", f"{SMR}/r1/scale")
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 2, "selector": "app=r1"}
    patched = ok(crd_api, "PATCH", f"{SMR}/r1/scale", {"spec": {"replicas": 4}}, MERGE)
    assert patched["spec"] == {"replicas": 4}
    assert ok(crd_api, "GET", f"{SMR}/r1")["spec"]["replicas"] == 4
    put = ok(crd_api, "PUT", f"{SMR}/r1/scale", {**patched, "spec": {"replicas": 6}})
    assert put["spec"] == {"replicas": 6} and ok(crd_api, "GET", f"{SMR}/r1")["metadata"]["generation"] == 3
    assert call(crd_api, "PUT", f"{SMR}/r1/scale", {**patched, "spec": {"replicas": 1}})[0] == 409  # stale rv
    assert call(crd_api, "PATCH", f"{SMR}/r1/scale", {"spec": {"replicas": -1}}, MERGE)[0] == 422
    ok(
        crd_api,
        "POST",
        STS,
        {
            "metadata": {"name": "s"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "s"}}, "template": POD_TEMPLATE},
        },
    )
    # the StatefulSet controller creates the pod asynchronously: the Scale follows the status it settles on
    timed_wait(lambda: (ok(crd_api, "GET", f"{STS}/s").get("status") or {}).get("replicas") == 1)
    assert ok(crd_api, "GET", f"{STS}/s/scale")["status"] == {"replicas": 1, "selector": "app=s"}


def test_json_patch_failed_test_is_422_and_merge_patch_null_deletes(crd_api: KubeApi) -> None:
    created = ok(crd_api, "POST", SMR, relay("r1", metadata={"name": "r1", "annotations": {"a": "1", "b": "2"}}))
    code, status = call(
        crd_api,
        "PATCH",
        f"{SMR}/r1",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
        ],
        JSONPATCH,
    )
    assert (code, status["kind"], status["reason"], status["status"]) == (422, "Status", "Invalid", "Failure")
    patched = ok(
        crd_api,
        "PATCH",
        f"{SMR}/r1",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": created["metadata"]["resourceVersion"]},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ],
        JSONPATCH,
    )
    assert patched["metadata"]["finalizers"] == ["y"]
    merged = ok(crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"annotations": {"a": None, "c": "3"}}}, MERGE)
    assert merged["metadata"]["annotations"] == {"b": "2", "c": "3"}


def test_strategic_merge_patch_merges_named_lists(kube_api: KubeApi) -> None:
    owner = ok(kube_api, "POST", CM, {"metadata": {"name": "owner"}})["metadata"]
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["uid"]}
    pod = {
        "metadata": {"name": "p", "finalizers": ["a"], "ownerReferences": [ref]},
        "spec": {
            "containers": [
                {
                    "name": "relay",
                    "image": "relay:1",
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 25, "name": "smtp"}],
                }
            ],
            "volumes": [{"name": "spool", "emptyDir": {}}],
        },
    }
    ok(kube_api, "POST", "/api/v1/namespaces/default/pods", pod)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": "u-2"}
    patched = ok(
        kube_api,
        "PATCH",
        "/api/v1/namespaces/default/pods/p",
        {
            "metadata": {"finalizers": ["b"], "ownerReferences": [other]},
            "spec": {
                "containers": [
                    {
                        "name": "relay",
                        "image": "relay:2",
                        "env": [{"name": "B", "value": "2"}],
                        "ports": [{"containerPort": 587, "name": "submission"}],
                    },
                    {"name": "exporter", "image": "exp:1"},
                ],
                "volumes": [{"name": "spool", "$patch": "delete"}, {"name": "tls", "secret": {"secretName": "s"}}],
            },
        },
        STRATEGIC,
    )
    relay_c, exporter = patched["spec"]["containers"]
    assert relay_c["image"] == "relay:2" and exporter["name"] == "exporter"
    assert [e["name"] for e in relay_c["env"]] == ["A", "B"]
    assert [p["containerPort"] for p in relay_c["ports"]] == [25, 587]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["tls"]
    assert [r["uid"] for r in patched["metadata"]["ownerReferences"]] == [owner["uid"], "u-2"]
    assert patched["metadata"]["finalizers"] == ["a", "b"]
    assert call(kube_api, "PATCH", f"{SMR}/x", {}, STRATEGIC)[0] == 404  # CRD not registered in this test


def test_finalizers_hold_deletion(crd_api: KubeApi) -> None:
    ok(crd_api, "POST", SMR, relay("r1", metadata={"name": "r1", "finalizers": ["relayfleet.io/drain"]}))
    deleting = ok(crd_api, "DELETE", f"{SMR}/r1")
    assert deleting["metadata"]["deletionTimestamp"]
    assert ok(crd_api, "GET", f"{SMR}/r1")["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    code, status = call(
        crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"finalizers": ["a", "relayfleet.io/drain"]}}, MERGE
    )
    assert (code, status["reason"]) == (422, "Invalid")  # no new finalizers while deleting
    ok(crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"finalizers": None}}, MERGE)
    code, status = call(crd_api, "GET", f"{SMR}/r1")
    assert code == 404 and status["reason"] == "NotFound"


def test_owner_deletion_collects_dependents(kube_api: KubeApi) -> None:
    def make(name: str, owners: list[Json]) -> Json:
        refs = [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}
            for o in owners
        ]
        return ok(kube_api, "POST", CM, {"metadata": {"name": name, "ownerReferences": refs}})

    root, other = make("root", []), make("other", [])
    child = make("child", [root])
    make("grandchild", [child])
    make("shared", [root, other])
    make("orphan-child", [other])

    def left() -> dict[str, Json]:
        return {i["metadata"]["name"]: i for i in ok(kube_api, "GET", CM)["items"]}

    ok(kube_api, "DELETE", f"{CM}/root")
    wait_for(lambda: set(left()) == {"other", "shared", "orphan-child"})  # the garbage collector runs later
    assert [r["name"] for r in left()["shared"]["metadata"]["ownerReferences"]] == ["other"]
    ok(kube_api, "DELETE", f"{CM}/other", {"propagationPolicy": "Orphan"})
    wait_for(lambda: set(left()) == {"shared", "orphan-child"})
    assert not any(o["metadata"].get("ownerReferences") for o in left().values())


def test_failures_are_status_objects(crd_api: KubeApi) -> None:
    code, status = call(crd_api, "GET", f"{SMR}/missing")
    assert code == 404 and status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": 404,
        "reason": "NotFound",
        "message": 'smtprelays.relayfleet.io "missing" not found',
        "details": {"name": "missing", "group": "relayfleet.io", "kind": "smtprelays"},
    }
    request = urllib.request.Request(
        crd_api.url + SMR,
        data=b"{not json",
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {crd_api.token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400 and json.loads(err.value.read())["reason"] == "BadRequest"
    code, status = call(crd_api, "POST", SMR, relay("Bad_Name"))
    assert (code, status["reason"]) == (422, "Invalid")
    assert call(crd_api, "POST", SMR, {"metadata": {}})[0] == 422
    assert call(crd_api, "GET", "/apis/nope.io/v1/things")[0] == 404
    assert call(crd_api, "PATCH", f"{SMR}/missing", {}, STRATEGIC)[0] == 404
    ok(crd_api, "POST", SMR, relay("r1"))
    code, status = call(crd_api, "PATCH", f"{SMR}/r1", {}, STRATEGIC)
    assert (code, status["reason"]) == (415, "UnsupportedMediaType")  # as a real server does for CRs
    bad_op = [{"op": "replace", "path": "/spec/none", "value": 1}]
    assert call(crd_api, "PATCH", f"{SMR}/r1", bad_op, JSONPATCH)[0] == 422


def test_crd_post_registers_and_discovery_follows(kube_api: KubeApi) -> None:
    assert call(kube_api, "GET", "/apis/relayfleet.io/v1")[0] == 404
    created = ok(kube_api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    assert {c["type"] for c in created["status"]["conditions"]} == {"Established", "NamesAccepted"}
    groups = {g["name"]: g for g in ok(kube_api, "GET", "/apis")["groups"]}
    assert groups["relayfleet.io"]["preferredVersion"]["groupVersion"] == "relayfleet.io/v1"
    assert groups["apps"]["preferredVersion"]["version"] == "v1"
    resources = {r["name"]: r for r in ok(kube_api, "GET", "/apis/relayfleet.io/v1")["resources"]}
    assert resources["smtprelays"]["shortNames"] == ["smr"] and resources["smtprelays"]["namespaced"]
    assert {"list", "watch", "patch"} <= set(resources["smtprelays"]["verbs"])
    assert resources["smtprelays/scale"]["kind"] == "Scale" and "smtprelays/status" in resources
    assert "configmaps" in {r["name"] for r in ok(kube_api, "GET", "/api/v1")["resources"]}
    ok(kube_api, "POST", SMR, relay("r1"))
    ok(kube_api, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/smtprelays.relayfleet.io")
    assert call(kube_api, "GET", "/apis/relayfleet.io/v1")[0] == 404


def test_table_output_uses_printer_columns(crd_api: KubeApi) -> None:
    ok(crd_api, "POST", SMR, relay("r1", 3))
    ok(crd_api, "PATCH", f"{SMR}/r1/status", {"status": {"readyReplicas": 2}}, MERGE)
    code, table = call(crd_api, "GET", SMR, accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Replicas", "Ready", "Age"]
    assert table["rows"][0]["cells"][:3] == ["r1", 3, 2] and table["rows"][0]["cells"][3].endswith("s")


def test_kubernetes_client(kube_api: KubeApi) -> None:
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(str(kube_api.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        core: Any = client.CoreV1Api(api_client)  # Any: the generated models type every field as Optional
        assert "default" in [n.metadata.name for n in core.list_namespace().items]
        created = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "b"}})
        assert created.metadata.uid and created.metadata.resource_version
        with pytest.raises(client.ApiException) as err:
            core.read_namespaced_config_map("nope", "default")
        assert err.value.status == 404
        events = list(
            watch.Watch().stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_config_map, "default", timeout_seconds=1
            )
        )
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "c")]
    finally:
        api_client.close()


# --- kubectl ------------------------------------------------------------------------------------------------


def test_kubectl_custom_resources(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(CRD))
    (tmp_path / "smr.yaml").write_text(yaml.safe_dump(relay("relay1", 2)))
    started = time.monotonic()
    assert "created" in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "crd.yaml")).stdout
    assert "created" in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "smr.yaml")).stdout
    ok(kube_api, "PATCH", f"{SMR}/relay1/status", {"status": {"readyReplicas": 1}}, MERGE)
    header, row = kubectl(kube_api, "get", "smr").stdout.splitlines()
    assert header.split() == ["NAME", "REPLICAS", "READY", "AGE"] and row.split()[:3] == ["relay1", "2", "1"]
    kubectl(kube_api, "scale", "smr", "relay1", "--replicas=5")
    assert kube_api.live("relayfleet.io/v1/smtprelays", "default", "relay1")["spec"]["replicas"] == 5  # type: ignore[index]
    assert "unchanged" not in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "smr.yaml")).stdout
    kubectl(kube_api, "delete", "smr", "relay1")
    assert kube_api.live("relayfleet.io/v1/smtprelays", "default", "relay1") is None
    assert "No resources found" in kubectl(kube_api, "get", "smr").stderr
    logging.getLogger(__name__).info("kubectl CR round trip: %.2fs", time.monotonic() - started)


def test_kubectl_builtin_kinds(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"app": "x"}}})
    )
    kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "cm.yaml"))
    kubectl(kube_api, "label", "cm", "c", "tier=mx")
    kubectl(kube_api, "patch", "cm", "c", "-p", '{"data":{"k":"v"}}')  # strategic merge
    assert kubectl(kube_api, "get", "cm", "-l", "tier=mx", "-o", "name").stdout.strip() == "configmap/c"
    assert "default" in kubectl(kube_api, "get", "ns").stdout
    assert kube_api.live("v1/configmaps", "default", "c")["data"] == {"k": "v"}  # type: ignore[index]
    kubectl(kube_api, "delete", "cm", "c")
    # Against the emulated 1.31 server kubectl's imperative generators send JSON.
    kubectl(kube_api, "create", "configmap", "d", "--from-literal=a=b")
    assert kube_api.live("v1/configmaps", "default", "d")["data"] == {"a": "b"}  # type: ignore[index]


def test_standalone_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-m", "tests.kube.server", "--port", "0", "--kubeconfig", str(kubeconfig)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
            token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
            request = urllib.request.Request(
                url + "/api/v1/namespaces/default", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["kind"] == "Namespace"
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0


# --- kopf ---------------------------------------------------------------------------------------------------


class Operator(KopfThread):
    """A tiny kopf operator for the test CRD, in its own thread and loop, with its own handler registry."""

    def __init__(self, api: KubeApi) -> None:
        super().__init__(kopf.OperatorRegistry(), ready_timeout=10, stop_timeout=15)
        self.api = api
        self.calls: list[tuple[str, str, Any]] = []
        self._register()

    def _register(self) -> None:
        reg, url = self.registry, self.api.url
        resource = ("relayfleet.io", "v1", "smtprelays")

        @kopf.on.login(registry=reg)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, token=self.api.token)

        @kopf.on.startup(registry=reg)
        async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            fast_settings(settings)

        @kopf.on.create(*resource, registry=reg, id="created")
        async def created(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> Json:
            child: Json = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-config"},
                "data": {"replicas": str(body["spec"]["replicas"])},
            }
            kopf.adopt(child, owner=body)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{url}/api/v1/namespaces/{namespace}/configmaps",
                    json=child,
                    headers={"Authorization": f"Bearer {self.api.token}"},
                ) as response,
            ):
                assert response.status == 201
            kopf.info(body, reason="Created", message=f"created {name}-config")  # a k8s Event
            self.calls.append(("create", name, body["spec"]["replicas"]))
            return {"child": f"{name}-config"}

        @kopf.on.update(*resource, registry=reg)
        async def updated(name: str, diff: kopf.Diff, **_: Any) -> None:
            self.calls.append(("update", name, [tuple(d) for d in diff]))

        @kopf.on.delete(*resource, registry=reg)
        async def deleted(name: str, **_: Any) -> None:
            self.calls.append(("delete", name, None))

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def operator(crd_api: KubeApi) -> Iterator[Operator]:
    with Operator(crd_api) as op:
        yield op


def test_kopf_operator_end_to_end(crd_api: KubeApi, operator: Operator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    api, timings = crd_api, {}
    ok(api, "POST", SMR, relay("r1", 2))
    timings["create"] = timed_wait(
        lambda: (
            ("create", "r1", 2) in operator.calls
            and ok(api, "GET", f"{SMR}/r1").get("status", {}).get("created", {}).get("child") == "r1-config"
        ),
        timeout=5,
    )
    obj = ok(api, "GET", f"{SMR}/r1")
    assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    child = ok(api, "GET", f"{CM}/r1-config")
    assert child["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    events = ok(api, "GET", "/api/v1/namespaces/default/events")["items"]
    assert any(e["involvedObject"]["name"] == "r1" and "created" in e["message"] for e in events)

    ok(api, "PATCH", f"{SMR}/r1", {"spec": {"replicas": 3}}, MERGE)
    timings["update"] = timed_wait(lambda: any(c[0] == "update" for c in operator.calls), timeout=5)
    assert ("update", "r1", [("change", ("spec", "replicas"), 2, 3)]) in operator.calls

    wait_for(
        lambda: (
            "kopf.zalando.org/last-handled-configuration"
            in ok(api, "GET", f"{SMR}/r1")["metadata"].get("annotations", {})
            and '"replicas":3'
            in ok(api, "GET", f"{SMR}/r1")["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"]
        )
    )
    ok(api, "DELETE", f"{SMR}/r1")
    timings["delete"] = timed_wait(lambda: call(api, "GET", f"{SMR}/r1")[0] == 404, timeout=5)
    assert ("delete", "r1", None) in operator.calls
    wait_for(lambda: call(api, "GET", f"{CM}/r1-config")[0] == 404, timeout=5)  # garbage-collected with its owner
    logging.getLogger(__name__).info("kopf scenario timings: %s", {k: f"{v:.3f}s" for k, v in timings.items()})
