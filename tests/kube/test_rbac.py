"""Authentication and RBAC: the emulator refuses what kube-apiserver's RBAC authorizer refuses, in its words.

Each case shows a request, the stored RBAC objects, and the apiserver's answer (401, 403 with
responsewriters.forbiddenMessage, or success); the audit and `rbac_diff` are checked on small examples.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.api_calls import call, ok, relay
from tests.kube.audit import Grant, bound_rules, rbac_diff
from tests.kube.auth import Attributes, request_attributes
from tests.peers.kube import KubeApi, kubectl

Json = dict[str, Any]
RBAC = "/apis/rbac.authorization.k8s.io/v1"
SA = "system:serviceaccount:default:op"
ROOT = Path(__file__).resolve().parents[2]


def role(name: str, rules: list[Json], namespace: str | None = "default") -> Json:
    kind = "Role" if namespace else "ClusterRole"
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(name: str, role_kind: str, role_name: str, subjects: list[Json], namespace: str | None = "default") -> Json:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": ref,
        "subjects": subjects,
    }


def apply(api: KubeApi, *docs: Json) -> None:
    """Create objects as the admin, at their URLs."""
    for doc in docs:
        group, _, version = doc["apiVersion"].rpartition("/")
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        plural = {"ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps"}.get(doc["kind"]) or (
            doc["kind"].lower() + "s"
        )
        ns = doc["metadata"].get("namespace")
        ok(api, "POST", f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}", doc)


def service_account(api: KubeApi, name: str = "op", namespace: str = "default") -> KubeApi:
    apply(api, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
    return api.as_service_account(namespace, name)


SA_SUBJECT = [{"kind": "ServiceAccount", "name": "op", "namespace": "default"}]


def test_tokens_authenticate(kube_api: KubeApi) -> None:
    code, status = call(kube_api.as_service_account("default", "missing"), "GET", "/api/v1/namespaces/default/pods")
    assert (code, status["reason"], status["message"]) == (401, "Unauthorized", "Unauthorized")  # no such SA
    bogus = KubeApi(url=kube_api.url, kubeconfig=kube_api.kubeconfig, emulator=kube_api.emulator, token="nope")
    assert call(bogus, "GET", "/api")[0] == 401
    sa = service_account(kube_api)
    assert call(sa, "GET", "/api")[0] == 200  # system:discovery, bound to system:authenticated
    assert call(sa, "GET", "/apis/apps/v1")[0] == 200
    assert call(sa, "GET", "/version")[0] == 200
    ok(kube_api, "DELETE", "/api/v1/namespaces/default/serviceaccounts/op")
    assert call(sa, "GET", "/api")[0] == 401  # the token dies with its ServiceAccount
    assert call(kube_api, "GET", "/api/v1/namespaces/default/secrets")[0] == 200  # the admin: system:masters


def test_forbidden_messages_follow_the_apiserver(kube_api: KubeApi) -> None:
    sa = service_account(kube_api)
    code, status = call(sa, "GET", "/api/v1/namespaces/default/configmaps/c1")
    assert (code, status["reason"]) == (403, "Forbidden")
    assert status["message"] == (
        'configmaps "c1" is forbidden: User "system:serviceaccount:default:op" cannot get resource "configmaps" '
        'in API group "" in the namespace "default"'
    )
    assert status["details"] == {"name": "c1", "group": "", "kind": "configmaps"}
    _, status = call(sa, "GET", "/apis/apps/v1/statefulsets?watch=true")
    assert status["message"] == (
        f'statefulsets.apps is forbidden: User "{SA}" cannot watch resource "statefulsets" in API group "apps" '
        "at the cluster scope"
    )
    _, status = call(
        sa, "PATCH", "/apis/apps/v1/namespaces/x/statefulsets/s/status", {}, "application/merge-patch+json"
    )
    assert status["message"] == (
        f'statefulsets.apps "s" is forbidden: User "{SA}" cannot patch resource "statefulsets/status" '
        'in API group "apps" in the namespace "x"'
    )
    _, status = call(sa, "DELETE", "/api/v1/namespaces/default/pods")
    assert "cannot deletecollection resource" in status["message"]
    _, status = call(sa, "GET", "/healthz/etcd")
    assert status["message"] == f'forbidden: User "{SA}" cannot get path "/healthz/etcd"'


def test_roles_and_bindings_grant_by_verb_group_resource_namespace_and_name(kube_api: KubeApi) -> None:
    sa = service_account(kube_api)
    apply(
        kube_api,
        role("cm", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}]),
        role("one", [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["get"]}]),
        binding("cm", "Role", "cm", SA_SUBJECT),
        binding("one", "Role", "one", [{"kind": "ServiceAccount", "name": "op"}]),  # namespace: the binding's
    )
    cm = "/api/v1/namespaces/default/configmaps"
    assert call(sa, "POST", cm, {"metadata": {"name": "c1"}})[0] == 201
    assert call(sa, "GET", f"{cm}/c1")[0] == 200
    assert call(sa, "GET", cm)[0] == 200
    assert call(sa, "GET", f"{cm}?watch=true&timeoutSeconds=1")[0] == 403  # list is not watch
    assert call(sa, "PATCH", f"{cm}/c1", {}, "application/merge-patch+json")[0] == 403
    assert call(sa, "GET", "/api/v1/namespaces/kube-system/configmaps")[0] == 403  # a Role binds in its namespace
    assert call(sa, "GET", "/api/v1/configmaps")[0] == 403  # nor cluster-wide
    ok(kube_api, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s1"}})
    ok(kube_api, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s2"}})
    assert call(sa, "GET", "/api/v1/namespaces/default/secrets/s1")[0] == 200
    assert call(sa, "GET", "/api/v1/namespaces/default/secrets/s2")[0] == 403  # resourceNames
    assert call(sa, "GET", "/api/v1/namespaces/default/secrets")[0] == 403  # a list has no name
    assert call(sa, "GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Ds1")[0] == 403
    # ... unless the rule grants list too: then a metadata.name field selector names the object
    apply(
        kube_api,
        role("list1", [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["list"]}]),
    )
    apply(kube_api, binding("list1", "Role", "list1", SA_SUBJECT))
    assert call(sa, "GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Ds1")[0] == 200


def test_cluster_roles_wildcards_subresources_and_groups(crd_api: KubeApi) -> None:
    sa = service_account(crd_api)
    apply(
        crd_api,
        role("relays", [{"apiGroups": ["relayfleet.io"], "resources": ["smtprelays"], "verbs": ["*"]}], None),
        role("status", [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]}], None),
        binding("relays", "ClusterRole", "relays", SA_SUBJECT, None),
        # a ClusterRole bound by a RoleBinding grants in that namespace only; a Group subject
        binding("status", "ClusterRole", "status", [{"kind": "Group", "name": "system:serviceaccounts:default"}]),
    )
    smr = "/apis/relayfleet.io/v1/namespaces/default/smtprelays"
    assert call(sa, "POST", smr, relay("r1"))[0] == 201
    assert call(sa, "GET", "/apis/relayfleet.io/v1/smtprelays")[0] == 200  # cluster-wide, by the ClusterRoleBinding
    assert call(sa, "DELETE", f"{smr}/r1")[0] == 200
    ok(crd_api, "POST", smr, relay("r2"))
    merge = "application/merge-patch+json"
    assert call(sa, "PATCH", f"{smr}/r2/status", {"status": {"replicas": 1}}, merge)[0] == 200
    assert call(sa, "GET", f"{smr}/r2/status")[0] == 403  # the resource's "*" verbs do not cover subresources
    assert call(sa, "PATCH", f"{smr}/r2/scale", {"spec": {"replicas": 2}}, merge)[0] == 403
    ok(crd_api, "POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    other = "/apis/relayfleet.io/v1/namespaces/other/smtprelays"
    ok(crd_api, "POST", other, relay("r3"))
    assert call(sa, "PATCH", f"{other}/r3/status", {"status": {"replicas": 1}}, merge)[0] == 403


def test_a_binding_to_a_missing_role_says_so(kube_api: KubeApi) -> None:
    sa = service_account(kube_api)
    apply(kube_api, binding("ghost", "ClusterRole", "ghost", SA_SUBJECT, None))
    _, status = call(sa, "GET", "/api/v1/namespaces/default/pods")
    assert status["message"].endswith(': RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found')


def test_request_attributes() -> None:
    def attrs(method: str, path: str, **query: str) -> tuple[str, str, str, str, str, str]:
        a = request_attributes("u", method, path, query)
        return a.verb, a.group, a.resource, a.subresource, a.namespace, a.name

    assert attrs("GET", "/api/v1/namespaces/ns/pods") == ("list", "", "pods", "", "ns", "")
    assert attrs("GET", "/api/v1/namespaces/ns/pods", watch="1") == ("watch", "", "pods", "", "ns", "")
    assert attrs("GET", "/api/v1/namespaces/ns/pods/p", watch="1") == ("get", "", "pods", "", "ns", "p")
    assert attrs("GET", "/api/v1/watch/namespaces/ns/pods/p") == ("watch", "", "pods", "", "ns", "p")
    assert attrs("POST", "/apis/apps/v1/namespaces/ns/statefulsets") == ("create", "apps", "statefulsets", "", "ns", "")
    assert attrs("PUT", "/apis/a.io/v1/namespaces/ns/xs/x/status") == ("update", "a.io", "xs", "status", "ns", "x")
    assert attrs("DELETE", "/api/v1/namespaces/ns/pods") == ("deletecollection", "", "pods", "", "ns", "")
    assert attrs("GET", "/api/v1/namespaces/ns") == ("get", "", "namespaces", "", "ns", "ns")
    assert attrs("PUT", "/api/v1/namespaces/ns/finalize") == ("update", "", "namespaces", "finalize", "ns", "ns")
    assert not request_attributes("u", "GET", "/apis/apps/v1", {}).resource_request


def test_audit_records_per_identity(kube_api: KubeApi) -> None:
    sa = service_account(kube_api)
    apply(kube_api, role("cm", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]))
    apply(kube_api, binding("cm", "Role", "cm", SA_SUBJECT))
    call(sa, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    call(sa, "GET", "/api/v1/namespaces/default/configmaps/c")
    audit = kube_api.audit
    assert kube_api._call(lambda: audit.grants(SA, allowed=True)) == {Grant("", "configmaps", "create")}
    assert kube_api._call(lambda: audit.grants(SA, allowed=False)) == {Grant("", "configmaps", "get")}
    assert Grant("", "serviceaccounts", "create") in kube_api._call(lambda: audit.grants("kubernetes-admin"))


def test_rbac_diff_both_ways() -> None:
    rules = [
        {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["p1"], "verbs": ["delete"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]
    requests = [
        Attributes("u", "get", "", "configmaps", namespace="ns", name="c"),
        Attributes("u", "list", "", "configmaps", namespace="ns"),
        Attributes("u", "watch", "", "configmaps", namespace="ns"),
        Attributes("u", "patch", "apps", "statefulsets", "status", "ns", "s"),
        Attributes("u", "delete", "", "pods", namespace="ns", name="p2"),
    ]
    missing, unused = rbac_diff(requests, rules)
    assert missing == {Grant("", "configmaps", "watch"), Grant("", "pods", "delete")}
    assert unused == {
        Grant("", "secrets", "get"),
        Grant("", "secrets", "list"),
        Grant("", "pods", "delete"),
        Grant("", "/metrics", "get"),
    }
    assert rbac_diff([], [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]) == (set(), {Grant("*", "*", "*")})
    assert rbac_diff(requests, [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]) == (set(), set())


def test_the_chart_rbac_through_the_api(kube_api: KubeApi) -> None:
    """The rendered chart's RBAC objects, created through the API, bind the operator's ServiceAccount."""
    helm = ROOT / ".tools/bin/helm"
    if not helm.exists():
        pytest.skip("helm is not installed in .tools/bin")
    rendered = subprocess.run(
        [str(helm), "template", "rf", str(ROOT / "charts/relayfleet"), "--namespace", "default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict)]
    kinds = ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    apply(kube_api, *[d for d in docs if d["kind"] in kinds])
    sa_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    operator = kube_api.as_service_account("default", sa_name)
    rules = bound_rules(docs, "default", sa_name)
    assert rules, "the chart binds no rules to its ServiceAccount"
    assert call(operator, "GET", "/apis/apps/v1/namespaces/default/statefulsets")[0] == 200
    code, status = call(operator, "GET", "/api/v1/namespaces/default/secrets/x")
    assert code == 404  # allowed (get secrets), so the apiserver answers for the object
    code, status = call(operator, "DELETE", "/api/v1/namespaces/default/pods/x")
    assert (code, status["reason"]) == (403, "Forbidden")
    recorded = kube_api._call(lambda: kube_api.audit.requests(operator.user))
    missing, _ = rbac_diff(recorded, rules)
    assert missing == {Grant("", "pods", "delete")}


def test_kubectl_as_a_service_account(crd_api: KubeApi, tmp_path: Path) -> None:
    """Real kubectl with a ServiceAccount kubeconfig: allowed and refused, as against a cluster."""
    sa = service_account(crd_api)
    apply(
        crd_api,
        role("read", [{"apiGroups": ["relayfleet.io"], "resources": ["smtprelays"], "verbs": ["get", "list"]}]),
        binding("read", "Role", "read", SA_SUBJECT),
    )
    ok(crd_api, "POST", "/apis/relayfleet.io/v1/namespaces/default/smtprelays", relay("r1"))
    assert "r1" in kubectl(sa, "get", "smr").stdout
    (tmp_path / "smr.yaml").write_text(json.dumps(relay("r2")))
    refused = kubectl(sa, "apply", "--validate=false", "-f", str(tmp_path / "smr.yaml"), check=False)
    assert refused.returncode != 0
    assert f'User "{SA}" cannot' in refused.stderr and "smtprelays" in refused.stderr


def test_owner_references_permission_enforcement(crd_api: KubeApi) -> None:
    """With the admission plugin on: ownerRefs need delete on the object, blockOwnerDeletion update on finalizers."""
    crd_api._call(lambda: setattr(crd_api.emulator, "owner_references_permission_enforcement", True))
    sa = service_account(crd_api)
    owner = ok(crd_api, "POST", "/apis/relayfleet.io/v1/namespaces/default/smtprelays", relay("r1"))
    apply(
        crd_api,
        role("cm", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]),
        binding("cm", "Role", "cm", SA_SUBJECT),
    )
    ref = {"apiVersion": "relayfleet.io/v1", "kind": "SmtpRelay", "name": "r1", "uid": owner["metadata"]["uid"]}
    cm = "/api/v1/namespaces/default/configmaps"
    assert call(sa, "POST", cm, {"metadata": {"name": "plain"}})[0] == 201
    code, status = call(sa, "POST", cm, {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    assert (code, status["message"]) == (
        403,
        'configmaps "owned" is forbidden: cannot set an ownerRef on a resource you can\'t delete: , <nil>',
    )
    apply(crd_api, role("del", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]}]))
    apply(crd_api, binding("del", "Role", "del", SA_SUBJECT))
    assert call(sa, "POST", cm, {"metadata": {"name": "owned", "ownerReferences": [ref]}})[0] == 201
    blocking = {**ref, "blockOwnerDeletion": True}
    code, status = call(sa, "POST", cm, {"metadata": {"name": "blocking", "ownerReferences": [blocking]}})
    assert code == 403 and "you can't set finalizers on" in status["message"]
    finalizers = [{"apiGroups": ["relayfleet.io"], "resources": ["smtprelays/finalizers"], "verbs": ["update"]}]
    apply(crd_api, role("fin", finalizers), binding("fin", "Role", "fin", SA_SUBJECT))
    assert call(sa, "POST", cm, {"metadata": {"name": "blocking", "ownerReferences": [blocking]}})[0] == 201
    grants = crd_api._call(lambda: crd_api.audit.grants(SA, allowed=True))
    assert Grant("relayfleet.io", "smtprelays/finalizers", "update") in grants
