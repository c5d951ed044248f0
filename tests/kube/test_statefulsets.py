"""The StatefulSet controller and kubelet: pods, claims, ordering, scaling, rolling updates and status."""

from __future__ import annotations

import copy
from typing import Any

from tests.harness.waiting import wait_for
from tests.kube.api_calls import call, ok
from tests.peers.kube import KubeApi

Json = dict[str, Any]
STS = "/apis/apps/v1/namespaces/default/statefulsets"
PODS = "/api/v1/namespaces/default/pods"
PVCS = "/api/v1/namespaces/default/persistentvolumeclaims"
MERGE = "application/merge-patch+json"


def statefulset(name: str = "web", replicas: int = 3, **spec: Any) -> Json:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": f"{name}-pods",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [{"name": "relay", "image": "relay:1"}]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "spool", "labels": {"tier": "queue"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
            **spec,
        },
    }


def pods(api: KubeApi) -> dict[str, Json]:
    return {p["metadata"]["name"]: p for p in ok(api, "GET", PODS)["items"]}


def status(api: KubeApi, name: str = "web") -> Json:
    return dict(ok(api, "GET", f"{STS}/{name}").get("status") or {})


def settled(api: KubeApi, replicas: int, name: str = "web") -> Json:
    """Wait until every pod is ready and updated; return the status."""

    def done() -> Json:
        s = status(api, name)
        want = (replicas, replicas, replicas)
        got = (s.get("replicas"), s.get("readyReplicas"), s.get("updatedReplicas"))
        return s if got == want and s.get("currentRevision") == s.get("updateRevision") else {}

    return wait_for(done, timeout=15)


def test_pods_claims_and_status(kube_api: KubeApi) -> None:
    created = ok(kube_api, "POST", STS, statefulset())
    s = settled(kube_api, 3)
    assert s["observedGeneration"] == created["metadata"]["generation"]
    assert s["availableReplicas"] == s["currentReplicas"] == 3 and s["updateRevision"].startswith("web-")
    found = pods(kube_api)
    assert set(found) == {"web-0", "web-1", "web-2"}
    pod = found["web-1"]
    assert pod["metadata"]["labels"] == {
        "app": "web",
        "controller-revision-hash": s["updateRevision"],
        "statefulset.kubernetes.io/pod-name": "web-1",
        "apps.kubernetes.io/pod-index": "1",
    }
    (ref,) = pod["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("StatefulSet", created["metadata"]["uid"], True)
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("web-1", "web-pods")
    assert {"name": "spool", "persistentVolumeClaim": {"claimName": "spool-web-1"}} in pod["spec"]["volumes"]
    assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"]
    claims = {c["metadata"]["name"]: c for c in ok(kube_api, "GET", PVCS)["items"]}
    assert set(claims) == {"spool-web-0", "spool-web-1", "spool-web-2"}
    assert claims["spool-web-0"]["metadata"]["labels"] == {"tier": "queue", "app": "web"}
    assert claims["spool-web-0"]["status"]["phase"] == "Bound"
    assert not claims["spool-web-0"]["metadata"].get("ownerReferences")  # Retain: not owned
    revisions = ok(kube_api, "GET", "/apis/apps/v1/namespaces/default/controllerrevisions")["items"]
    assert [r["metadata"]["name"] for r in revisions] == [s["updateRevision"]]


def test_ordered_ready_waits_for_each_pod(kube_api: KubeApi) -> None:
    class ManualKubelet:
        def __init__(self) -> None:
            self.started: list[str] = []

        def start(self, pod: Json, node: Any) -> None:
            self.started.append(pod["metadata"]["name"])

        def stop(self, pod: Json, grace: int, node: Any) -> None:
            node.stopped(pod["metadata"]["namespace"], pod["metadata"]["name"])

    kubelet = ManualKubelet()
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", kubelet))
    node = kube_api.emulator.control.node
    ok(kube_api, "POST", STS, statefulset())
    wait_for(lambda: kubelet.started == ["web-0"], timeout=5)
    assert set(pods(kube_api)) == {"web-0"}  # web-1 waits until web-0 is Running and Ready
    node.ready("default", "web-0")
    wait_for(lambda: kubelet.started == ["web-0", "web-1"], timeout=5)
    assert status(kube_api)["readyReplicas"] == 1 and status(kube_api)["replicas"] == 2
    node.ready("default", "web-1")
    wait_for(lambda: len(kubelet.started) == 3, timeout=5)
    node.ready("default", "web-2")
    settled(kube_api, 3)


def test_parallel_creates_all_at_once(kube_api: KubeApi) -> None:
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", None))  # nothing ever becomes ready
    ok(kube_api, "POST", STS, statefulset(podManagementPolicy="Parallel"))
    wait_for(lambda: set(pods(kube_api)) == {"web-0", "web-1", "web-2"}, timeout=5)
    s = wait_for(lambda: status(kube_api) if status(kube_api).get("replicas") == 3 else {}, timeout=5)
    assert s["readyReplicas"] == 0 and all(not p["spec"].get("nodeName") for p in pods(kube_api).values())


def test_scale_down_removes_the_highest_ordinals_and_keeps_claims(kube_api: KubeApi) -> None:
    ok(kube_api, "POST", STS, statefulset(replicas=4))
    settled(kube_api, 4)
    ok(kube_api, "PATCH", f"{STS}/web/scale", {"spec": {"replicas": 2}}, MERGE)
    seen: list[set[str]] = []

    def shrunk() -> bool:
        names = {n for n, p in pods(kube_api).items() if not p["metadata"].get("deletionTimestamp")}
        if not seen or seen[-1] != names:
            seen.append(names)
        return names == {"web-0", "web-1"}

    wait_for(shrunk, timeout=10)
    assert {"web-0", "web-1", "web-2"} in seen  # web-3 went first (OrderedReady: one at a time)
    settled(kube_api, 2)
    claims = {c["metadata"]["name"] for c in ok(kube_api, "GET", PVCS)["items"]}
    assert claims == {"spool-web-0", "spool-web-1", "spool-web-2", "spool-web-3"}  # whenScaled: Retain


def test_retention_policy_delete_owns_the_claims(kube_api: KubeApi) -> None:
    policy = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    ok(kube_api, "POST", STS, statefulset(replicas=2, persistentVolumeClaimRetentionPolicy=policy))
    settled(kube_api, 2)
    ok(kube_api, "PATCH", f"{STS}/web", {"spec": {"replicas": 1}}, MERGE)
    wait_for(lambda: call(kube_api, "GET", f"{PVCS}/spool-web-1")[0] == 404, timeout=10)  # owned by its pod
    ok(kube_api, "DELETE", f"{STS}/web")
    wait_for(lambda: not ok(kube_api, "GET", PVCS)["items"] and not pods(kube_api), timeout=10)


def test_deleting_the_set_deletes_pods_but_retains_claims(kube_api: KubeApi) -> None:
    ok(kube_api, "POST", STS, statefulset(replicas=2))
    settled(kube_api, 2)
    ok(kube_api, "DELETE", f"{STS}/web")
    wait_for(lambda: not pods(kube_api), timeout=10)
    assert len(ok(kube_api, "GET", PVCS)["items"]) == 2
    ok(kube_api, "POST", STS, statefulset(replicas=2))  # the claims are reused, not recreated
    settled(kube_api, 2)
    assert len(ok(kube_api, "GET", PVCS)["items"]) == 2


def test_rolling_update_from_the_highest_ordinal_honours_partition(kube_api: KubeApi) -> None:
    ok(kube_api, "POST", STS, statefulset(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}))
    first = settled(kube_api, 3)["updateRevision"]
    sts = ok(kube_api, "GET", f"{STS}/web")
    template = copy.deepcopy(sts["spec"]["template"])
    template["spec"]["containers"][0]["image"] = "relay:2"
    ok(kube_api, "PATCH", f"{STS}/web", {"spec": {"template": template}}, MERGE)

    def rolled() -> Json:
        s = status(kube_api)
        return s if s.get("updatedReplicas") == 2 and s.get("readyReplicas") == 3 else {}

    s = wait_for(rolled, timeout=15)
    assert s["updateRevision"] != first and s["currentRevision"] == first and s["currentReplicas"] == 1
    images = {n: p["spec"]["containers"][0]["image"] for n, p in pods(kube_api).items()}
    assert images == {"web-0": "relay:1", "web-1": "relay:2", "web-2": "relay:2"}
    ok(kube_api, "PATCH", f"{STS}/web", {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}, MERGE)
    s = settled(kube_api, 3)
    assert s["currentRevision"] == s["updateRevision"] != first
    assert pods(kube_api)["web-0"]["spec"]["containers"][0]["image"] == "relay:2"
    assert s["observedGeneration"] == ok(kube_api, "GET", f"{STS}/web")["metadata"]["generation"]


def test_the_controller_can_be_switched_off(kube_api: KubeApi) -> None:
    kube_api._call(lambda: setattr(kube_api.emulator, "statefulset_controller", False))
    ok(kube_api, "POST", STS, statefulset())
    ok(kube_api, "PATCH", f"{STS}/web/status", {"status": {"replicas": 3, "readyReplicas": 3}}, MERGE)
    wait_for(lambda: True)
    assert not pods(kube_api) and status(kube_api) == {"replicas": 3, "readyReplicas": 3}


def test_a_pass_syncs_only_the_sets_an_event_concerns(kube_api: KubeApi) -> None:
    """As the real controller's work queue: a change to one set's pod syncs that set, not every set."""
    for name in ("web", "mail"):
        ok(kube_api, "POST", STS, statefulset(name, replicas=1))
        settled(kube_api, 1, name)
    controller = kube_api.emulator.control.statefulsets
    synced: list[str] = []
    original = controller.sync

    def counting(sts: Json) -> None:
        synced.append(sts["metadata"]["name"])
        original(sts)

    kube_api._call(lambda: setattr(controller, "sync", counting))
    try:
        ok(kube_api, "PATCH", f"{PODS}/mail-0", {"metadata": {"labels": {"touched": "yes"}}}, MERGE)
        wait_for(lambda: "mail" in synced, timeout=10)
        ok(kube_api, "DELETE", f"{PODS}/web-0")
        wait_for(lambda: "web" in synced, timeout=10)
        settled(kube_api, 1, "web")
    finally:
        kube_api._call(lambda: setattr(controller, "sync", original))
    assert synced.index("web") > synced.index("mail"), f"the set whose pod changed was synced alone first: {synced}"
    assert synced[: synced.index("web")] == ["mail"] * synced.index("web"), synced
    assert pods(kube_api)["web-0"]["metadata"]["uid"], "the deleted pod was recreated by its set's sync"
