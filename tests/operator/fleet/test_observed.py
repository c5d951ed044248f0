"""The watch cache answers for a relay only when its pods agree with its StatefulSet, and forgets what is gone."""

from __future__ import annotations

from typing import Any

from relay_operator.fleet.observed import Observed

Json = dict[str, Any]


def statefulset(replicas: int, ready: int | None = None, name: str = "outbound") -> Json:
    return {
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "mail", "uid": "s1", "generation": 3, "resourceVersion": "9",
                     "labels": {"team": "x"}, "annotations": {"big": "x" * 1000}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "relay"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready},
    }  # fmt: skip


def pod(ordinal: int, relay: str = "outbound", phase: str = "Running", **meta: Any) -> Json:
    return {
        "metadata": {"name": f"{relay}-{ordinal}", "namespace": "mail", "uid": f"{relay}-u{ordinal}",
                     "labels": {"app.kubernetes.io/instance": relay}, **meta},
        "spec": {"containers": [{"name": "relay", "image": "relay:1"}]},
        "status": {"phase": phase, "podIP": f"127.244.0.{ordinal + 2}", "conditions": [{"type": "Ready"}]},
    }  # fmt: skip


def test_nothing_is_answered_for_a_relay_never_seen() -> None:
    observed = Observed()
    observed.saw_pod(None, pod(0))
    assert observed.statefulset("mail", "outbound") is None
    assert observed.pods("mail", "outbound") is None, "without its StatefulSet the pod count cannot be checked"


def test_pods_are_answered_once_they_agree_with_the_statefulset() -> None:
    observed = Observed()
    observed.saw_statefulset(None, statefulset(2))
    observed.saw_pod(None, pod(1))
    assert observed.pods("mail", "outbound") is None, "one of two pods seen: the list is read from the API"
    observed.saw_pod("ADDED", pod(0))
    pods = observed.pods("mail", "outbound")
    assert pods is not None
    assert [p["metadata"]["name"] for p in pods] == ["outbound-0", "outbound-1"]
    assert pods[0] == {
        "metadata": {"name": "outbound-0", "namespace": "mail", "uid": "outbound-u0"},
        "status": {"phase": "Running", "podIP": "127.244.0.2"},
    }, "only what the admin calls read is kept"


def test_the_statefulset_keeps_what_status_reads() -> None:
    observed = Observed()
    observed.saw_statefulset("MODIFIED", statefulset(3, ready=1))
    kept = observed.statefulset("mail", "outbound")
    assert kept == {
        "kind": "StatefulSet",
        "metadata": {"name": "outbound", "namespace": "mail", "uid": "s1", "generation": 3, "resourceVersion": "9"},
        "spec": {"replicas": 3},
        "status": {"replicas": 3, "readyReplicas": 1},
    }


def test_changes_and_deletions_follow_the_events() -> None:
    observed = Observed()
    observed.saw_statefulset(None, statefulset(2))
    observed.saw_pod(None, pod(0))
    observed.saw_pod(None, pod(1, phase="Pending"))
    observed.saw_pod("MODIFIED", pod(1, deletionTimestamp="2026-12-03T10:00:00Z"))
    pods = observed.pods("mail", "outbound")
    assert pods is not None and pods[1]["metadata"]["deletionTimestamp"] == "2026-12-03T10:00:00Z"
    observed.saw_pod("DELETED", pod(1))
    observed.saw_statefulset("MODIFIED", statefulset(1))
    pods = observed.pods("mail", "outbound")
    assert pods is not None and [p["metadata"]["name"] for p in pods] == ["outbound-0"]
    observed.saw_statefulset("DELETED", statefulset(1))
    assert observed.statefulset("mail", "outbound") is None and observed.pods("mail", "outbound") is None


def test_relays_are_kept_apart_and_forgotten() -> None:
    observed = Observed()
    for name in ("a", "b"):
        observed.saw_statefulset(None, statefulset(1, name=name))
        observed.saw_pod(None, pod(0, relay=name))
    observed.saw_pod(None, {"metadata": {"name": "stray", "uid": "z"}, "status": {}})  # no instance label: ignored
    pods_a, pods_b = observed.pods("mail", "a"), observed.pods("mail", "b")
    assert pods_a is not None and pods_b is not None
    assert [p["metadata"]["name"] for p in pods_a] == ["a-0"] and [p["metadata"]["name"] for p in pods_b] == ["b-0"]
    observed.forget("mail", "a")
    assert observed.pods("mail", "a") is None and observed.pods("mail", "b") is not None
