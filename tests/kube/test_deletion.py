"""DELETE and garbage collection as the apiserver's store and kube-controller-manager's GC do them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.harness.waiting import wait_for
from tests.kube.api_calls import SMR, call, ok, relay
from tests.peers.kube import KubeApi, kubectl

Json = dict[str, Any]
CM = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"


def cm(api: KubeApi, name: str, owners: tuple[Json, ...] | list[Json] = (), block: bool = False, **meta: Any) -> Json:
    refs = [
        {
            "apiVersion": o["apiVersion"],
            "kind": o["kind"],
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
            **({"blockOwnerDeletion": True} if block else {}),
        }
        for o in owners
    ]
    return ok(api, "POST", CM, {"metadata": {"name": name, "ownerReferences": refs, **meta}})


def names(api: KubeApi, path: str = CM) -> set[str]:
    return {i["metadata"]["name"] for i in ok(api, "GET", path)["items"]}


def test_background_deletes_the_owner_at_once_and_dependents_soon_after(kube_api: KubeApi) -> None:
    owner = cm(kube_api, "owner")
    cm(kube_api, "child", [owner])
    ok(kube_api, "DELETE", f"{CM}/owner")
    assert call(kube_api, "GET", f"{CM}/owner")[0] == 404
    assert "child" in names(kube_api)  # the GC is asynchronous, like kube-controller-manager's
    wait_for(lambda: "child" not in names(kube_api), timeout=5)


def test_a_dangling_owner_reference_is_collected(kube_api: KubeApi) -> None:
    fake = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost", "uid": "no-such-uid"}}
    cm(kube_api, "child", [fake])
    wait_for(lambda: "child" not in names(kube_api), timeout=5)


def test_the_collector_scans_the_store_only_when_something_was_deleted_or_dangles(kube_api: KubeApi) -> None:
    """A fleet being created (owners present, nothing deleted) costs the collector no scan of every object."""
    collector = kube_api.emulator.control.gc
    scans: list[int] = []
    original = collector._full_pass

    def counting() -> None:
        scans.append(1)
        original()

    def caught_up() -> bool:
        return bool(kube_api._call(lambda: collector._read_rv == kube_api.emulator.resource_version))

    owner = cm(kube_api, "owner")
    wait_for(caught_up, timeout=5)  # the first pass scans everything once
    kube_api._call(lambda: setattr(collector, "_full_pass", counting))
    try:
        for i in range(5):
            cm(kube_api, f"child-{i}", [owner])
        ok(kube_api, "PATCH", f"{CM}/child-0", {"data": {"k": "v"}}, "application/merge-patch+json")
        wait_for(caught_up, timeout=5)
        assert scans == [], "owners present and nothing deleted: no scan"
        cm(kube_api, "stray", [{**owner, "metadata": {**owner["metadata"], "uid": "no-such-uid"}}])
        wait_for(lambda: "stray" not in names(kube_api), timeout=10)
        assert scans, "a dangling owner reference is collected after a scan"
        scans.clear()
        ok(kube_api, "DELETE", f"{CM}/owner")
        wait_for(lambda: not {f"child-{i}" for i in range(5)} & names(kube_api), timeout=10)
        assert scans, "a deletion makes the collector look at the dependents"
    finally:
        kube_api._call(lambda: setattr(collector, "_full_pass", original))


def test_orphan_keeps_the_owner_until_dependents_are_released(kube_api: KubeApi) -> None:
    owner = cm(kube_api, "owner")
    cm(kube_api, "child", [owner])
    deleting = ok(kube_api, "DELETE", f"{CM}/owner", {"propagationPolicy": "Orphan"})
    assert deleting["metadata"]["finalizers"] == ["orphan"] and deleting["metadata"]["deletionTimestamp"]
    wait_for(lambda: call(kube_api, "GET", f"{CM}/owner")[0] == 404, timeout=5)
    child = ok(kube_api, "GET", f"{CM}/child")
    assert not child["metadata"].get("ownerReferences")


def test_foreground_deletes_blocking_dependents_first(kube_api: KubeApi) -> None:
    owner = cm(kube_api, "owner")
    cm(kube_api, "child", [owner], block=True, finalizers=["example.com/hold"])
    deleting = ok(kube_api, "DELETE", f"{CM}/owner", {"propagationPolicy": "Foreground"})
    assert deleting["metadata"]["finalizers"] == ["foregroundDeletion"]
    child = wait_for(lambda: ok(kube_api, "GET", f"{CM}/child")["metadata"].get("deletionTimestamp"), timeout=5)
    assert child
    assert ok(kube_api, "GET", f"{CM}/owner")["metadata"]["deletionTimestamp"]  # waits for the blocking child
    ok(kube_api, "PATCH", f"{CM}/child", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    wait_for(lambda: call(kube_api, "GET", f"{CM}/owner")[0] == 404, timeout=5)
    assert names(kube_api) == set()


def test_default_policy_per_kind_and_version(kube_api: KubeApi) -> None:
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    created = ok(kube_api, "POST", "/apis/batch/v1/namespaces/default/jobs", job)
    cm(kube_api, "job-child", [created])
    deleting = ok(kube_api, "DELETE", "/apis/batch/v1/namespaces/default/jobs/j")
    assert deleting["metadata"]["finalizers"] == ["orphan"]  # batch/v1 Jobs orphan by default (legacy)
    wait_for(lambda: call(kube_api, "GET", "/apis/batch/v1/namespaces/default/jobs/j")[0] == 404, timeout=5)
    assert "job-child" in names(kube_api)
    rc = ok(
        kube_api, "POST", "/api/v1/namespaces/default/replicationcontrollers", {"metadata": {"name": "rc"}, "spec": {}}
    )
    assert ok(kube_api, "DELETE", f"/api/v1/namespaces/default/replicationcontrollers/{rc['metadata']['name']}")[
        "metadata"
    ]["finalizers"] == ["orphan"]


def test_finalizers_hold_and_recreation_waits(crd_api: KubeApi) -> None:
    ok(
        crd_api,
        "POST",
        SMR,
        relay("r1", metadata={"name": "r1", "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]}),
    )
    ok(crd_api, "DELETE", f"{SMR}/r1")
    code, status = call(crd_api, "POST", SMR, relay("r1"))
    assert (code, status["reason"]) == (409, "AlreadyExists")
    assert status["message"] == 'object is being deleted: smtprelays.relayfleet.io "r1" already exists'
    again = ok(crd_api, "DELETE", f"{SMR}/r1")  # a second DELETE changes nothing
    assert again["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    ok(crd_api, "PATCH", f"{SMR}/r1", {"metadata": {"finalizers": []}}, "application/merge-patch+json")
    assert call(crd_api, "GET", f"{SMR}/r1")[0] == 404
    assert call(crd_api, "POST", SMR, relay("r1"))[0] == 201


def test_preconditions_and_options_are_checked(kube_api: KubeApi) -> None:
    obj = cm(kube_api, "c")
    code, status = call(kube_api, "DELETE", f"{CM}/c", {"preconditions": {"uid": "other"}})
    assert (code, status["reason"]) == (409, "Conflict")
    assert status["message"] == (
        f'Operation cannot be fulfilled on ConfigMap "c": the UID in the precondition (other) does not match the UID '
        f"in record ({obj['metadata']['uid']}). The object might have been deleted and then recreated"
    )
    code, status = call(kube_api, "DELETE", f"{CM}/c", {"preconditions": {"resourceVersion": "1"}})
    assert code == 409 and "The object might have been modified" in status["message"]
    code, status = call(kube_api, "DELETE", f"{CM}/c", {"propagationPolicy": "Sideways"})
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"] == (
        'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Sideways": '
        'supported values: "Foreground", "Background", "Orphan", "nil"'
    )
    code, _ = call(kube_api, "DELETE", f"{CM}/c", {"propagationPolicy": "Orphan", "orphanDependents": True})
    assert code == 422
    ok(kube_api, "DELETE", f"{CM}/c", {"preconditions": {"uid": obj["metadata"]["uid"]}})


def test_pods_terminate_gracefully(kube_api: KubeApi) -> None:
    class SlowKubelet:
        def __init__(self) -> None:
            self.stops: list[tuple[str, int]] = []

        def start(self, pod: Json, node: Any) -> None:
            node.ready(pod["metadata"]["namespace"], pod["metadata"]["name"])

        def stop(self, pod: Json, grace: int, node: Any) -> None:
            self.stops.append((pod["metadata"]["name"], grace))  # stops only when the test says so

    kubelet = SlowKubelet()
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", kubelet))
    pod = {"metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 60, "containers": [{"name": "c"}]}}
    ok(kube_api, "POST", PODS, pod)
    running = wait_for(
        lambda: (p := ok(kube_api, "GET", f"{PODS}/p")).get("status", {}).get("phase") == "Running" and p
    )
    assert running["spec"]["nodeName"] and any(
        c["type"] == "Ready" and c["status"] == "True" for c in running["status"]["conditions"]
    )
    deleting = ok(kube_api, "DELETE", f"{PODS}/p")
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 60 and deleting["metadata"]["deletionTimestamp"]
    wait_for(lambda: kubelet.stops == [("p", 60)], timeout=5)
    assert call(kube_api, "GET", f"{PODS}/p")[0] == 200  # still terminating
    assert call(kube_api, "POST", PODS, pod)[1]["message"].startswith("object is being deleted:")
    kube_api._call(lambda: kube_api.emulator.control.node.stopped("default", "p"))
    wait_for(lambda: call(kube_api, "GET", f"{PODS}/p")[0] == 404, timeout=5)
    # never scheduled: no grace period at all (the kubelet is off)
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", None))
    ok(kube_api, "POST", PODS, {"metadata": {"name": "q"}, "spec": {"containers": [{"name": "c"}]}})
    ok(kube_api, "DELETE", f"{PODS}/q")
    assert call(kube_api, "GET", f"{PODS}/q")[0] == 404


def test_kubectl_delete_cascades(crd_api: KubeApi, tmp_path: Path) -> None:
    """kubectl's --cascade maps to propagationPolicy; custom resources only (kubectl sends built-ins as protobuf)."""
    owner = ok(crd_api, "POST", SMR, relay("r1"))
    cm(crd_api, "r1-config", [owner])
    kubectl(crd_api, "delete", "smr", "r1", "--cascade=orphan")
    wait_for(lambda: call(crd_api, "GET", f"{SMR}/r1")[0] == 404, timeout=5)
    assert not ok(crd_api, "GET", f"{CM}/r1-config")["metadata"].get("ownerReferences")
    (tmp_path / "r2.yaml").write_text(yaml.safe_dump(relay("r2")))
    kubectl(crd_api, "apply", "--validate=false", "-f", str(tmp_path / "r2.yaml"))
    owner = ok(crd_api, "GET", f"{SMR}/r2")
    cm(crd_api, "r2-config", [owner], block=True)
    kubectl(crd_api, "delete", "smr", "r2", "--cascade=foreground")  # waits until the owner is gone
    assert call(crd_api, "GET", f"{SMR}/r2")[0] == 404 and call(crd_api, "GET", f"{CM}/r2-config")[0] == 404
