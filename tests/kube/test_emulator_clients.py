"""The API emulator as real clients see it: the `kubernetes` client, kubectl, the standalone server and a kopf
operator end to end (the plain-HTTP behaviour is in test_emulator.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from tests.harness.kopf_thread import KopfThread, fast_settings
from tests.harness.waiting import wait_for
from tests.kube.api_calls import (
    CM,
    CRD,
    MERGE,
    SMR,
    Json,
    call,
    ok,
    relay,
    timed_wait,
)
from tests.peers.kube import KubeApi, kubectl


def test_kubernetes_client(kube_api: KubeApi) -> None:
    from kubernetes import client, config, watch

    api_client = config.new_client_from_config(str(kube_api.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        core: Any = client.CoreV1Api(api_client)  # Any: the generated models type every field as Optional
        assert "default" in [n.metadata.name for n in core.list_namespace().items]
        created = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "b"}})
        assert created.metadata.uid and created.metadata.resource_version
        with pytest.raises(client.ApiException) as err:
            core.read_namespaced_config_map("nope", "default")
        assert err.value.status == 404
        events = list(
            watch.Watch().stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_config_map, "default", timeout_seconds=1
            )
        )
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "c")]
    finally:
        api_client.close()


# --- kubectl ------------------------------------------------------------------------------------------------


def test_kubectl_custom_resources(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(CRD))
    (tmp_path / "smr.yaml").write_text(yaml.safe_dump(relay("relay1", 2)))
    started = time.monotonic()
    assert "created" in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "crd.yaml")).stdout
    assert "created" in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "smr.yaml")).stdout
    ok(kube_api, "PATCH", f"{SMR}/relay1/status", {"status": {"readyReplicas": 1}}, MERGE)
    header, row = kubectl(kube_api, "get", "smr").stdout.splitlines()
    assert header.split() == ["NAME", "REPLICAS", "READY", "AGE"] and row.split()[:3] == ["relay1", "2", "1"]
    kubectl(kube_api, "scale", "smr", "relay1", "--replicas=5")
    assert kube_api.live("relayfleet.io/v1/smtprelays", "default", "relay1")["spec"]["replicas"] == 5  # type: ignore[index]
    assert "unchanged" not in kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "smr.yaml")).stdout
    kubectl(kube_api, "delete", "smr", "relay1")
    assert kube_api.live("relayfleet.io/v1/smtprelays", "default", "relay1") is None
    assert "No resources found" in kubectl(kube_api, "get", "smr").stderr
    logging.getLogger(__name__).info("kubectl CR round trip: %.2fs", time.monotonic() - started)


def test_kubectl_builtin_kinds(kube_api: KubeApi, tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"app": "x"}}})
    )
    kubectl(kube_api, "apply", "--validate=false", "-f", str(tmp_path / "cm.yaml"))
    kubectl(kube_api, "label", "cm", "c", "tier=mx")
    kubectl(kube_api, "patch", "cm", "c", "-p", '{"data":{"k":"v"}}')  # strategic merge
    assert kubectl(kube_api, "get", "cm", "-l", "tier=mx", "-o", "name").stdout.strip() == "configmap/c"
    assert "default" in kubectl(kube_api, "get", "ns").stdout
    assert kube_api.live("v1/configmaps", "default", "c")["data"] == {"k": "v"}  # type: ignore[index]
    kubectl(kube_api, "delete", "cm", "c")
    # Against the emulated 1.31 server kubectl's imperative generators send JSON.
    kubectl(kube_api, "create", "configmap", "d", "--from-literal=a=b")
    assert kube_api.live("v1/configmaps", "default", "d")["data"] == {"a": "b"}  # type: ignore[index]


def test_standalone_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-m", "tests.kube.server", "--port", "0", "--kubeconfig", str(kubeconfig)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
            token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
            request = urllib.request.Request(
                url + "/api/v1/namespaces/default", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["kind"] == "Namespace"
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0


# --- kopf ---------------------------------------------------------------------------------------------------


class Operator(KopfThread):
    """A tiny kopf operator for the test CRD, in its own thread and loop, with its own handler registry."""

    def __init__(self, api: KubeApi) -> None:
        super().__init__(kopf.OperatorRegistry(), ready_timeout=10, stop_timeout=15)
        self.api = api
        self.calls: list[tuple[str, str, Any]] = []
        self._register()

    def _register(self) -> None:
        reg, url = self.registry, self.api.url
        resource = ("relayfleet.io", "v1", "smtprelays")

        @kopf.on.login(registry=reg)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, token=self.api.token)

        @kopf.on.startup(registry=reg)
        async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
            fast_settings(settings)

        @kopf.on.create(*resource, registry=reg, id="created")
        async def created(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> Json:
            child: Json = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-config"},
                "data": {"replicas": str(body["spec"]["replicas"])},
            }
            kopf.adopt(child, owner=body)
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{url}/api/v1/namespaces/{namespace}/configmaps",
                    json=child,
                    headers={"Authorization": f"Bearer {self.api.token}"},
                ) as response,
            ):
                assert response.status == 201
            kopf.info(body, reason="Created", message=f"created {name}-config")  # a k8s Event
            self.calls.append(("create", name, body["spec"]["replicas"]))
            return {"child": f"{name}-config"}

        @kopf.on.update(*resource, registry=reg)
        async def updated(name: str, diff: kopf.Diff, **_: Any) -> None:
            self.calls.append(("update", name, [tuple(d) for d in diff]))

        @kopf.on.delete(*resource, registry=reg)
        async def deleted(name: str, **_: Any) -> None:
            self.calls.append(("delete", name, None))

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def operator(crd_api: KubeApi) -> Iterator[Operator]:
    with Operator(crd_api) as op:
        yield op


def test_kopf_operator_end_to_end(crd_api: KubeApi, operator: Operator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    api, timings = crd_api, {}
    ok(api, "POST", SMR, relay("r1", 2))
    timings["create"] = timed_wait(
        lambda: (
            ("create", "r1", 2) in operator.calls
            and ok(api, "GET", f"{SMR}/r1").get("status", {}).get("created", {}).get("child") == "r1-config"
        ),
        timeout=5,
    )
    obj = ok(api, "GET", f"{SMR}/r1")
    assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    child = ok(api, "GET", f"{CM}/r1-config")
    assert child["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    events = ok(api, "GET", "/api/v1/namespaces/default/events")["items"]
    assert any(e["involvedObject"]["name"] == "r1" and "created" in e["message"] for e in events)

    ok(api, "PATCH", f"{SMR}/r1", {"spec": {"replicas": 3}}, MERGE)
    timings["update"] = timed_wait(lambda: any(c[0] == "update" for c in operator.calls), timeout=5)
    assert ("update", "r1", [("change", ("spec", "replicas"), 2, 3)]) in operator.calls

    wait_for(
        lambda: (
            "kopf.zalando.org/last-handled-configuration"
            in ok(api, "GET", f"{SMR}/r1")["metadata"].get("annotations", {})
            and '"replicas":3'
            in ok(api, "GET", f"{SMR}/r1")["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"]
        )
    )
    ok(api, "DELETE", f"{SMR}/r1")
    timings["delete"] = timed_wait(lambda: call(api, "GET", f"{SMR}/r1")[0] == 404, timeout=5)
    assert ("delete", "r1", None) in operator.calls
    wait_for(lambda: call(api, "GET", f"{CM}/r1-config")[0] == 404, timeout=5)  # garbage-collected with its owner
    logging.getLogger(__name__).info("kopf scenario timings: %s", {k: f"{v:.3f}s" for k, v in timings.items()})
