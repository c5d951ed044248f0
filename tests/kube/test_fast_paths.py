"""The emulator's indexes and caches change its cost, never its answers: refusals still happen, watches still deliver.

Each shortcut gets a test that would catch it answering from stale or partial data: the pod and revision
indexes (`indexes.py`, used by the StatefulSet controller), the dirty-set lookups for ownerless pods and claims,
the CEL results memoized on what a rule can see (`cel_rules.self_paths`), the status-only decoding of built-in
kinds, and merge patches that share the stored object's untouched parts.
"""

from __future__ import annotations

import copy
from typing import Any

import kmock
import pytest

from tests.harness.waiting import wait_for
from tests.kube import cel_rules
from tests.kube.api_calls import ok
from tests.kube.client import MERGE, accepted, send
from tests.kube.emulator import KubeEmulator
from tests.kube.patches import merge_patch
from tests.kube.statefulsets import pod_set_name
from tests.kube.test_statefulsets import PODS, PVCS, STS, pods, settled, statefulset
from tests.peers.kube import KubeApi

Json = dict[str, Any]
POD_RES = kmock.resource("", "v1", "pods")


def _pod(name: str, **labels: str) -> Json:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_the_pod_index_follows_every_create_change_and_delete() -> None:
    emu = KubeEmulator(statefulset_controller=False, kubelet=None)

    def named(set_name: str) -> list[str]:
        found = emu.indexed(POD_RES, "set-name", pod_set_name, ("default", set_name))
        return [p["metadata"]["name"] for p in found]

    for name in ("web-0", "web-1", "web-x", "web-1-0", "mail-0"):
        emu._create(POD_RES, "default", _pod(name))
    assert named("web") == ["web-0", "web-1"], "only <set>-<ordinal>; web-x and web-1-0 are not web's"
    assert named("web-1") == ["web-1-0"] and named("mail") == ["mail-0"]
    emu._create(POD_RES, "default", _pod("web-2"))  # after the index exists
    old = emu._get(POD_RES, "default", "web-0")
    assert old is not None
    emu._commit(POD_RES, old, {**old, "metadata": {**old["metadata"], "labels": {"touched": "yes"}}}, "main")
    assert named("web") == ["web-0", "web-1", "web-2"], "a change keeps the store's order"
    assert emu.indexed(POD_RES, "set-name", pod_set_name, ("default", "web"))[0]["metadata"]["labels"] == {
        "touched": "yes"
    }, "the index holds the stored version, not the one it was built from"
    emu._remove(POD_RES, emu._live[POD_RES][("default", "web-1")], "Background")
    assert named("web") == ["web-0", "web-2"]
    assert named("nobody") == []


def test_an_ownerless_pod_named_like_a_sets_is_adopted_by_that_set(kube_api: KubeApi) -> None:
    """The dirty-set lookup finds the set from the pod's name: it adopts it and, beyond its replicas, removes it."""
    ok(kube_api, "POST", STS, statefulset(replicas=1))
    settled(kube_api, 1)
    ok(kube_api, "POST", PODS, _pod("web-1", app="web"))
    wait_for(lambda: "web-1" not in pods(kube_api), timeout=10)
    assert set(pods(kube_api)) == {"web-0"}


def test_a_claim_deleted_by_hand_is_recreated_by_its_set(kube_api: KubeApi) -> None:
    """Claims are owned by nobody (Retain): the set is found from the name ``<volume>-<set>-<ordinal>``."""
    ok(kube_api, "POST", STS, statefulset(replicas=1))
    settled(kube_api, 1)
    first = ok(kube_api, "GET", f"{PVCS}/spool-web-0")["metadata"]["uid"]
    ok(kube_api, "DELETE", f"{PVCS}/spool-web-0")

    def recreated() -> bool:
        reply = send(kube_api, "GET", f"{PVCS}/spool-web-0")
        return reply.code == 200 and reply.body["metadata"]["uid"] != first

    wait_for(recreated, timeout=10)


def test_a_status_write_of_a_builtin_kind_is_still_decoded_and_refused(kube_api: KubeApi) -> None:
    """Only the status is decoded on a /status write; its type errors and unknown fields are still found."""
    ok(kube_api, "POST", STS, statefulset(replicas=1))
    settled(kube_api, 1)
    bad = send(kube_api, "PATCH", f"{STS}/web/status", {"status": {"replicas": "one"}}, MERGE)
    assert bad.code == 422 and bad.body["details"]["causes"][0]["field"] == "patch"
    assert "cannot unmarshal string into Go struct field StatefulSetStatus.status.replicas of type int32" in (
        bad.message
    )
    reply = send(kube_api, "PATCH", f"{STS}/web/status", {"status": {"colour": "red", "collisionCount": 2}}, MERGE)
    stored = accepted(reply)
    assert reply.warnings == ['299 - "unknown field \\"status.colour\\""']
    assert "colour" not in stored["status"] and stored["status"]["collisionCount"] == 2
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "relay:1", "the rest is the stored one"


ROOT_SCHEMA: Json = {
    "type": "object",
    "x-kubernetes-validations": [
        {"rule": "self.metadata.name.size() <= 5", "messageExpression": "'name ' + self.metadata.name + ' is long'"},
    ],
    "properties": {
        "metadata": {"type": "object"},
        "status": {"type": "object", "properties": {"n": {"type": "integer"}}},
    },
}


def test_what_a_rule_can_see_of_self() -> None:
    assert cel_rules.self_paths("self.metadata.name.matches('^a') && self.metadata.name.size() < 9") == {
        "metadata": {"name": None}
    }
    assert cel_rules.self_paths("has(self.tls) && self.tls.mode != 'x' || self.listeners.all(l, l.port > 0)") == {
        "tls": None,
        "listeners": None,
    }
    for whole in ("self.size() > 0", "self == self", "self['a'] == 1", "[1].all(self, self > 0)", "isIP(self)"):
        assert cel_rules.self_paths(whole) is None, whole
    schema = {"type": "object", "properties": {"dashed-name": {"type": "string"}, "other": {"type": "string"}}}
    assert cel_rules.project({"dashed-name": "x", "other": "y"}, schema, {"dashed__dash__name": None}) == {
        "dashed-name": "x"
    }


def test_a_memoized_rule_still_refuses_and_runs_again_only_on_what_it_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Json] = []
    original = cel_rules._run_program

    def counted(prog: Any, activation: Json) -> Any:
        runs.append(activation)
        return original(prog, activation)

    monkeypatch.setattr(cel_rules, "_run_program", counted)
    short = {"metadata": {"name": "abc", "resourceVersion": "1"}, "status": {"n": 1}}
    assert cel_rules.evaluate(ROOT_SCHEMA, short) == []
    again = {"metadata": {"name": "abc", "resourceVersion": "2"}, "status": {"n": 2}}
    assert cel_rules.evaluate(ROOT_SCHEMA, again) == [] and len(runs) == 1, "the name did not change: not run again"
    long = {"metadata": {"name": "abcdefg", "resourceVersion": "3"}, "status": {"n": 2}}
    for _ in range(2):  # the second time from the memo: the refusal and its message are the same
        errors = [str(e) for e in cel_rules.evaluate(ROOT_SCHEMA, copy.deepcopy(long))]
        assert errors == ['<nil>: Invalid value: "object": name abcdefg is long']
    assert len(runs) == 2, "one more run, for the new name"
    assert set(runs[0]["self"]) == {"metadata"}, "the rule was given only what it reads"


def test_merge_patch_leaves_the_stored_object_as_it_was() -> None:
    stored = {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"deep": {"list": [1, 2]}, "keep": {"k": 1}}}
    before = copy.deepcopy(stored)
    patched = merge_patch(stored, {"metadata": {"labels": {"x": None, "y": "2"}}, "spec": {"deep": {"list": [3]}}})
    assert stored == before
    assert patched == {
        "metadata": {"name": "a", "labels": {"y": "2"}},
        "spec": {"deep": {"list": [3]}, "keep": {"k": 1}},
    }
