"""The API emulator behaves like a real API server where kopf, kubectl and the kubernetes client look.

Each test talks plain HTTP JSON (urllib, aiohttp), the `kubernetes` client, real kubectl, or a real kopf
operator to the emulator from `tests/peers/kube.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from tests.harness.waiting import wait_for
from tests.kube.api_calls import (
    CM,
    CRD,
    JSONPATCH,
    MERGE,
    POD_TEMPLATE,
    SMR,
    STRATEGIC,
    STS,
    Json,
    call,
    ok,
    relay,
    timed_wait,
)
from tests.peers.kube import KubeApi

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
