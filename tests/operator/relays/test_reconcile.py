"""reconcile and kube.apply against an in-memory API (no HTTP).

`MemoryKube` replaces only `Kube.request`, so the real apply/diff logic runs; it counts writes,
which is how idempotency (no write when nothing changed) is proven.
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import pytest

from relay_operator.kube import ApiError, Connection, Kube
from relay_operator.relays import reconcile as rec
from relay_operator.settings import Settings

NS = "mail"


def json_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json_merge(out.get(key), value)
    return out


class MemoryKube(Kube):
    """Kube whose requests hit a dict: path -> object."""

    def __init__(self) -> None:
        super().__init__(Connection(server="http://127.0.0.1:1"))
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self._rv = 0

    async def request(
        self, method: str, path: str, body: Any = None, params: Any = None, content_type: str = ""
    ) -> Any:
        self.requests += 1
        self.log.append((method, path))
        if method != "GET":
            self.writes += 1
        sub = ""
        match = re.match(r"^(.*/namespaces/[^/]+/[^/]+/[^/]+)/(status|scale)$", path)
        if match:
            path, sub = match.group(1), match.group(2)
        if method == "GET":
            if path in self.objects:
                return copy.deepcopy(self.objects[path])
            items = [o for p, o in self.objects.items() if p.rsplit("/", 1)[0] == path]
            if re.search(r"/namespaces/[^/]+/[a-z]+$", path):
                selector = dict(kv.split("=") for kv in (params or {}).get("labelSelector", "").split(",") if kv)
                labels = lambda o: o["metadata"].get("labels") or {}  # noqa: E731
                return {"items": [o for o in items if selector.items() <= labels(o).items()]}
            return None
        if method == "POST":
            item = f"{path}/{body['metadata']['name']}"
            if item in self.objects:
                raise ApiError(409, "AlreadyExists", method, item)
            self._rv += 1
            created = copy.deepcopy(dict(body))
            created["metadata"] = {
                **created["metadata"],
                "uid": f"uid-{self._rv}",
                "resourceVersion": str(self._rv),
                "generation": 1,
            }
            self.objects[item] = created
            return copy.deepcopy(created)
        if path not in self.objects:
            raise ApiError(404, "NotFound", method, path)
        if method == "DELETE":
            del self.objects[path]
            return {}
        if sub == "status":
            body = {"status": body.get("status")}
        current = self.objects[path]
        updated = json_merge(current, body)
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        self.objects[path] = updated
        return copy.deepcopy(updated)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def info(self, reason: str, message: str) -> None:
        self.seen.append(("Normal", reason, message))

    def warn(self, reason: str, message: str) -> None:
        self.seen.append(("Warning", reason, message))


def relay(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "outbound", "namespace": NS, "uid": "relay-uid", "generation": generation},
        "spec": spec,
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}


# (The pure checks live in test_validation.py and ../test_merge.py: looptime leaks a loop when sync and async
# tests share a module.)
TLS_SPEC = {
    "listeners": [{"name": "smtps", "port": 465, "tls": "implicit"}],
    "tls": {"secretName": "outbound-tls"},
}


async def stored_relay(kube: MemoryKube, spec: dict[str, Any]) -> dict[str, Any]:
    await kube.create(relay(spec))
    body = await kube.get("SmtpRelay", NS, "outbound")
    assert body is not None
    return body


# -- reconcile -----------------------------------------------------------------------------------


async def test_reconcile_creates_children_then_changes_nothing() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {})
    result = await rec.reconcile(body, kube, Settings(), events)
    assert sorted(result.outcomes.values()) == ["created"] * 7
    assert result.outcomes["Secret/outbound-admin-token"] == "created"
    assert result.outcomes["Secret/outbound-dkim-keys"] == "created"
    assert ("Normal", "Created", "StatefulSet/outbound created") in events.seen
    token_path = "/api/v1/namespaces/mail/secrets/outbound-admin-token"
    token = kube.objects[token_path]["data"]["token"]
    assert len(base64.b64decode(token)) >= 32
    assert kube.objects[token_path]["metadata"]["ownerReferences"][0]["name"] == "outbound"
    assert result.status["phase"] == "Progressing"
    stored = await kube.get("SmtpRelay", NS, "outbound")
    assert stored is not None and stored["status"]["selector"].endswith("instance=outbound")

    writes = kube.writes
    again = await rec.reconcile(stored, kube, Settings(), events)
    assert set(again.outcomes.values()) == {"unchanged"}
    assert kube.writes == writes, "a rerun must not write anything"
    assert kube.objects[token_path]["data"]["token"] == token, "the token is never regenerated"


async def test_fresh_relay_creates_without_reading_and_can_leave_the_status_to_the_caller() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {})
    kube.log.clear()
    result = await rec.reconcile(body, kube, Settings(), events, fresh=True, write_status_patch=False)
    assert sorted(result.outcomes.values()) == ["created"] * 7
    # one list of the namespace's SendingDomains (a relay may come after its domains), then only creates
    assert sorted(m for m, _ in kube.log) == ["GET"] + ["POST"] * 7, "no GET before the creates, no status PATCH"
    assert next(path for method, path in kube.log if method == "GET").endswith("/sendingdomains")
    config = next(i for i, (_, path) in enumerate(kube.log) if path.endswith("/configmaps"))
    sts = next(i for i, (_, path) in enumerate(kube.log) if path.endswith("/statefulsets"))
    assert config < sts, "the ConfigMap is created before the StatefulSet"
    assert result.status_changed and result.status["phase"] == "Progressing"
    stored = await kube.get("SmtpRelay", NS, "outbound")
    assert stored is not None and "status" not in stored

    # Children that exist already (a retried create): 409, then the usual read and compare.
    kube.log.clear()
    again = await rec.reconcile(body, kube, Settings(), events, fresh=True)
    assert set(again.outcomes.values()) == {"unchanged"}
    # eight GETs: the domains' list, each existing child read and compared, the admin-token Secret checked ours
    assert sorted(method for method, _ in kube.log) == ["GET"] * 8 + ["PATCH"] + ["POST"] * 7


async def test_spec_change_patches_only_what_changed_and_keeps_foreign_edits() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {})
    await rec.reconcile(body, kube, Settings(), events)
    svc_path = "/api/v1/namespaces/mail/services/outbound"
    kube.objects[svc_path]["metadata"]["labels"]["team"] = "mail"  # a manual edit of a field we do not own
    kube.objects[svc_path]["spec"]["ports"][0]["nodePort"] = 30025

    body["spec"] = {"replicas": 4, "listeners": [{"name": "smtp", "port": 2525}, {"name": "alt", "port": 2526}]}
    result = await rec.reconcile(body, kube, Settings(), events)
    assert result.outcomes["StatefulSet/outbound"] == "patched"
    assert result.outcomes["Service/outbound"] == "patched"
    assert result.outcomes["PodDisruptionBudget/outbound"] == "unchanged"
    svc = kube.objects[svc_path]
    assert svc["metadata"]["labels"]["team"] == "mail"
    assert [(p["name"], p.get("nodePort")) for p in svc["spec"]["ports"]] == [("smtp", 30025), ("alt", None)]
    sts = kube.objects["/apis/apps/v1/namespaces/mail/statefulsets/outbound"]
    assert sts["spec"]["replicas"] == 4


async def test_enabling_storage_recreates_the_statefulset() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {"queue": {"ephemeral": True}})
    await rec.reconcile(body, kube, Settings(), events)
    body["spec"] = {"queue": {"storage": "1Gi"}}
    result = await rec.reconcile(body, kube, Settings(), events)
    assert result.outcomes["StatefulSet/outbound"] == "recreated"
    assert ("DELETE", "/apis/apps/v1/namespaces/mail/statefulsets/outbound") in kube.log
    sts = kube.objects["/apis/apps/v1/namespaces/mail/statefulsets/outbound"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"


async def test_missing_secret_degrades_without_touching_children() -> None:
    kube, events = MemoryKube(), Events()
    await kube.create(secret("outbound-tls", **{"tls.crt": "Yw==", "tls.key": "aw=="}))
    body = await stored_relay(kube, TLS_SPEC)
    await rec.reconcile(body, kube, Settings(), events)
    before = copy.deepcopy({p: o for p, o in kube.objects.items() if "smtprelays" not in p})

    await kube.delete("Secret", NS, "outbound-tls")
    del before["/api/v1/namespaces/mail/secrets/outbound-tls"]
    body = await kube.get("SmtpRelay", NS, "outbound")
    assert body is not None
    body["spec"] = {**TLS_SPEC, "replicas": 5}
    result = await rec.reconcile(body, kube, Settings(), events)
    assert result.outcomes == {}
    assert {p: o for p, o in kube.objects.items() if "smtprelays" not in p} == before
    stored = await kube.get("SmtpRelay", NS, "outbound")
    assert stored is not None
    degraded = next(c for c in stored["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SecretNotFound"
    assert "spec.tls.secretName" in degraded["message"] and "create it" in degraded["message"]
    assert stored["status"]["phase"] == "Degraded"
    assert events.seen[-1][:2] == ("Warning", "SecretNotFound")

    # The same problem again (a resync) is not announced twice.
    count = len(events.seen)
    await rec.reconcile(stored, kube, Settings(), events)
    assert len(events.seen) == count


async def test_invalid_spec_degrades() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {"listeners": [{"name": "a", "port": 25}, {"name": "a", "port": 26}]})
    result = await rec.reconcile(body, kube, Settings(), events)
    assert result.problems[0].reason == "InvalidSpec"
    assert "listener names must be unique" in result.problems[0].message
    assert not [p for p in kube.objects if "statefulsets" in p]


async def test_refresh_status_follows_the_statefulset() -> None:
    kube, events = MemoryKube(), Events()
    body = await stored_relay(kube, {"replicas": 2})
    await rec.reconcile(body, kube, Settings(), events)
    sts_path = "/apis/apps/v1/namespaces/mail/statefulsets/outbound"
    kube.objects[sts_path]["status"] = {
        "observedGeneration": 1,
        "replicas": 2,
        "readyReplicas": 2,
        "updatedReplicas": 2,
    }
    status = await rec.refresh_status(kube, NS, "outbound")
    assert status is not None and status["phase"] == "Ready"
    writes = kube.writes
    await rec.refresh_status(kube, NS, "outbound")
    assert kube.writes == writes, "an unchanged status is not written again"
    assert await rec.refresh_status(kube, NS, "absent") is None


@pytest.mark.parametrize("delete_claims", [False, True])
async def test_delete_claims_only_when_asked(delete_claims: bool) -> None:
    kube, events = MemoryKube(), Events()
    spec = {"queue": {"storage": "1Gi", "deleteClaimsOnDelete": delete_claims}}
    body = await stored_relay(kube, spec)
    await rec.reconcile(body, kube, Settings(), events)
    template = kube.objects["/apis/apps/v1/namespaces/mail/statefulsets/outbound"]["spec"]["volumeClaimTemplates"][0]
    for i in range(2):
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"spool-outbound-{i}", "namespace": NS, "labels": template["metadata"]["labels"]},
        }
        await kube.create(claim)
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "unrelated", "namespace": NS, "labels": {"app": "x"}},
        }
    )
    if delete_claims:  # the StatefulSet goes first (its controller would recreate claims), then come back
        with pytest.raises(rec.StillDeleting, match="StatefulSet/outbound and its pods are still stopping"):
            await rec.delete_claims(body, kube, events)
        assert "/apis/apps/v1/namespaces/mail/statefulsets/outbound" not in kube.objects
        assert ("Normal", "Deleting") in [(kind, reason) for kind, reason, _ in events.seen]
    deleted = await rec.delete_claims(body, kube, events)
    claims = sorted(p.rsplit("/", 1)[1] for p in kube.objects if "persistentvolumeclaims" in p)
    if delete_claims:
        assert deleted == ["spool-outbound-0", "spool-outbound-1"]
        assert claims == ["unrelated"]
    else:
        assert deleted == []
        assert claims == ["spool-outbound-0", "spool-outbound-1", "unrelated"]
