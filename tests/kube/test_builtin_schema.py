"""Built-in kinds are decoded against the Kubernetes 1.31 OpenAPI schema on write, as the apiserver does.

Wrong JSON types and malformed quantities fail decoding (400 on create/update, 422 ``patch`` on patch, see
endpoints/handlers/create.go and patch.go); unknown fields are dropped with a Warning header, or refused under
``fieldValidation=Strict``; quantities are stored and returned canonical; required fields are 422.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.client import MERGE, STRATEGIC, accepted, send
from tests.peers.kube import KubeApi, kubectl

Json = dict[str, Any]
STS = "/apis/apps/v1/namespaces/default/statefulsets"
PODS = "/api/v1/namespaces/default/pods"
PVCS = "/api/v1/namespaces/default/persistentvolumeclaims"


def statefulset(name: str = "s", **spec: Any) -> Json:
    container = {"name": "c", "image": "busybox", "resources": {"requests": {"memory": "1024Mi", "cpu": "0.5"}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "q"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1.5Gi"}}},
                }
            ],
            **spec,
        },
    }


def test_quantities_are_stored_and_returned_canonical(kube_api: KubeApi) -> None:
    created = accepted(send(kube_api, "POST", STS, statefulset()))
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"memory": "1Gi", "cpu": "500m"}
    assert created["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1536Mi"
    stored = kube_api.live("apps/v1/statefulsets", "default", "s")
    assert (
        stored is not None
        and stored["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    )
    pvc = {
        "metadata": {"name": "p"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": 2000000}}},
    }
    assert accepted(send(kube_api, "POST", PVCS, pvc))["spec"]["resources"]["requests"]["storage"] == "2M"


@pytest.mark.parametrize("bad", ["1K", "abc", "1.2.3"])
def test_malformed_quantities_fail_decoding(kube_api: KubeApi, bad: str) -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": bad}}}]},
    }
    reply = send(kube_api, "POST", PODS, pod)
    assert reply.code == 400 and reply.body["reason"] == "BadRequest"
    detail = (
        "unable to parse quantity's suffix"
        if bad == "1K"
        else ("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    )
    assert reply.message == f'Pod in version "v1" cannot be handled as a Pod: {detail}'


def test_type_errors_fail_decoding(kube_api: KubeApi) -> None:
    reply = send(kube_api, "POST", STS, statefulset(replicas="3"))
    assert (reply.code, reply.message) == (
        400,
        'StatefulSet in version "v1" cannot be handled as a StatefulSet: json: cannot unmarshal string into '
        "Go struct field StatefulSetSpec.spec.replicas of type int32",
    )
    accepted(send(kube_api, "POST", STS, statefulset()))
    patched = send(kube_api, "PATCH", f"{STS}/s", {"spec": {"replicas": "4"}}, MERGE)
    assert patched.code == 422 and patched.body["details"]["causes"][0]["field"] == "patch"
    assert patched.message.startswith(' "" is invalid: patch: Invalid value: "{')
    assert (
        "json: cannot unmarshal string into Go struct field StatefulSetSpec.spec.replicas of type int32"
        in patched.message
    )


def test_unknown_fields_warn_by_default_and_fail_when_strict(kube_api: KubeApi) -> None:
    body = statefulset(bogus=True)
    body["spec"]["template"]["spec"]["containers"][0]["colour"] = "red"
    reply = send(kube_api, "POST", STS, body)
    created = accepted(reply)
    assert "bogus" not in created["spec"] and "colour" not in created["spec"]["template"]["spec"]["containers"][0]
    assert sorted(reply.warnings) == [
        '299 - "unknown field \\"spec.bogus\\""',
        '299 - "unknown field \\"spec.template.spec.containers[0].colour\\""',
    ]
    strict = send(kube_api, "POST", STS, statefulset("t", bogus=1), fieldValidation="Strict")
    assert (strict.code, strict.message) == (
        400,
        'StatefulSet in version "v1" cannot be handled as a StatefulSet: '
        'strict decoding error: unknown field "spec.bogus"',
    )
    cm = send(
        kube_api,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": "c"}, "date": {}},
        fieldValidation="Ignore",
    )
    assert accepted(cm) and cm.warnings == []


def test_required_fields_are_422(kube_api: KubeApi) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"image": "i"}]}}
    reply = send(kube_api, "POST", PODS, pod)
    assert reply.code == 422 and reply.message == 'Pod "p" is invalid: spec.containers[0].name: Required value'
    sts = statefulset()
    del sts["spec"]["template"]
    assert send(kube_api, "POST", STS, sts).message == 'StatefulSet.apps "s" is invalid: spec.template: Required value'
    binding = {"metadata": {"name": "b"}, "subjects": [{"kind": "User", "name": "u"}]}
    reply = send(kube_api, "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", binding)
    assert reply.message == 'RoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Required value'


def test_secret_string_data_is_folded_into_data(kube_api: KubeApi) -> None:
    secret = {"metadata": {"name": "s"}, "stringData": {"k": "v"}, "data": {"a": "Yg=="}}
    created = accepted(send(kube_api, "POST", "/api/v1/namespaces/default/secrets", secret))
    assert created["data"] == {"a": "Yg==", "k": "dg=="} and "stringData" not in created


def test_strategic_merge_and_kubectl_are_validated_too(kube_api: KubeApi) -> None:
    accepted(send(kube_api, "POST", STS, statefulset()))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2000m"}}}]}}}}
    patched = accepted(send(kube_api, "PATCH", f"{STS}/s", patch, STRATEGIC))
    assert patched["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2"}
    result = kubectl(kube_api, "create", "configmap", "x", "--from-literal=a=b", "-o", "name")
    assert result.stdout.strip() == "configmap/x"
