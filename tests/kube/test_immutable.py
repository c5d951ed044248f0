"""Updates the apiserver refuses because a field is immutable (Kubernetes 1.31 apps/core validation)."""

from __future__ import annotations

from typing import Any

from tests.kube.client import JSONPATCH, MERGE, accepted, send
from tests.kube.test_builtin_schema import STS, statefulset
from tests.peers.kube import KubeApi

Json = dict[str, Any]
STS_FORBIDDEN = (
    'StatefulSet.apps "s" is invalid: spec: Forbidden: updates to statefulset spec for fields other than '
    "'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', "
    "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
)


def test_statefulset_spec_outside_the_mutable_fields(kube_api: KubeApi) -> None:
    accepted(send(kube_api, "POST", STS, statefulset()))
    for patch in (
        {"spec": {"replicas": 3, "minReadySeconds": 5, "revisionHistoryLimit": 2}},
        {"spec": {"updateStrategy": {"type": "OnDelete"}, "ordinals": {"start": 1}}},
        {"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}},
        {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}},
        {"spec": {"podManagementPolicy": "OrderedReady"}},  # the default, spelled out: no change
    ):
        accepted(send(kube_api, "PATCH", f"{STS}/s", patch, MERGE))
    for patch in (
        {"spec": {"serviceName": "other"}},
        {"spec": {"selector": {"matchLabels": {"app": "t"}}}},
        {"spec": {"podManagementPolicy": "Parallel"}},
    ):
        reply = send(kube_api, "PATCH", f"{STS}/s", patch, MERGE)
        assert (reply.code, reply.message) == (422, STS_FORBIDDEN), patch
    grow = [{"op": "replace", "path": "/spec/volumeClaimTemplates/0/spec/resources/requests/storage", "value": "2Gi"}]
    assert send(kube_api, "PATCH", f"{STS}/s", grow, JSONPATCH).message == STS_FORBIDDEN
    assert send(kube_api, "GET", f"{STS}/s").body["spec"]["replicas"] == 3


def test_service_cluster_ip_is_kept_once_set(kube_api: KubeApi) -> None:
    path = "/api/v1/namespaces/default/services"
    svc = {"metadata": {"name": "v"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 25}]}}
    accepted(send(kube_api, "POST", path, svc))
    reply = send(kube_api, "PATCH", f"{path}/v", {"spec": {"clusterIP": "10.96.0.11"}}, MERGE)
    assert reply.message == 'Service "v" is invalid: spec.clusterIP: Invalid value: "10.96.0.11": field is immutable'
    stored = send(kube_api, "GET", f"{path}/v").body
    del stored["spec"]["clusterIP"]  # a PUT without it keeps the allocated address
    assert accepted(send(kube_api, "PUT", f"{path}/v", stored))["spec"]["clusterIP"] == "10.96.0.10"


def test_pvc_spec_and_expansion(kube_api: KubeApi) -> None:
    path = "/api/v1/namespaces/default/persistentvolumeclaims"
    pvc = {
        "metadata": {"name": "p"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    accepted(send(kube_api, "POST", path, pvc))
    grow = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    message = (
        'PersistentVolumeClaim "p" is invalid: spec: Forbidden: spec is immutable after creation except '
        "resources.requests and volumeAttributesClassName for bound claims"
    )
    assert send(kube_api, "PATCH", f"{path}/p", grow, MERGE).message == message  # not bound yet
    accepted(send(kube_api, "PATCH", f"{path}/p/status", {"status": {"phase": "Bound"}}, MERGE))
    assert (
        accepted(send(kube_api, "PATCH", f"{path}/p", grow, MERGE))["spec"]["resources"]["requests"]["storage"] == "2Gi"
    )
    shrink = send(kube_api, "PATCH", f"{path}/p", {"spec": {"resources": {"requests": {"storage": "1500Mi"}}}}, MERGE)
    assert shrink.message.endswith(
        "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
    )
    modes = send(kube_api, "PATCH", f"{path}/p", {"spec": {"accessModes": ["ReadWriteMany"]}}, MERGE)
    assert modes.message == message


def test_immutable_configmaps_and_secrets(kube_api: KubeApi) -> None:
    cms = "/api/v1/namespaces/default/configmaps"
    accepted(send(kube_api, "POST", cms, {"metadata": {"name": "c"}, "data": {"a": "1"}, "immutable": True}))
    assert accepted(send(kube_api, "PATCH", f"{cms}/c", {"metadata": {"labels": {"x": "y"}}}, MERGE))
    reply = send(kube_api, "PATCH", f"{cms}/c", {"data": {"a": "2"}, "immutable": False}, MERGE)
    assert reply.message == (
        'ConfigMap "c" is invalid: [immutable: Forbidden: field is immutable when `immutable` is set, '
        "data: Forbidden: field is immutable when `immutable` is set]"
    )
    secrets = "/api/v1/namespaces/default/secrets"
    accepted(send(kube_api, "POST", secrets, {"metadata": {"name": "s"}, "data": {"a": "MQ=="}, "type": "Opaque"}))
    reply = send(kube_api, "PATCH", f"{secrets}/s", {"type": "kubernetes.io/tls"}, MERGE)
    assert reply.message == 'Secret "s" is invalid: type: Invalid value: "kubernetes.io/tls": field is immutable'
