"""Plain-HTTP JSON calls to the API emulator and the objects the emulator's tests share (a CRD of SmtpRelay
with status and scale subresources, a relay body)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.harness.waiting import wait_for
from tests.peers.kube import KubeApi

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


def timed_wait(check: Callable[[], Any], timeout: float = 10.0) -> float:
    """Poll until ``check()`` is truthy; return the seconds it took."""
    started = time.monotonic()
    wait_for(check, timeout=timeout, interval=0.005)
    return time.monotonic() - started
