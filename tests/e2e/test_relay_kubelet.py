"""The relay kubelet as a node: a pod's process runs at the pod's IP with its volumes, sees ConfigMap updates,
gets SIGTERM on delete and SIGKILL when it outlives its grace (whatever the container is: here a shell)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.relay_kubelet import RelayKubelet
from tests.harness.waiting import wait_for
from tests.operator.handlers.test_e2e import EmulatorApi, get, ok
from tests.peers.kube import KubeApi

pytestmark = pytest.mark.e2e
PODS, CONFIGMAPS = "/api/v1/namespaces/default/pods", "/api/v1/namespaces/default/configmaps"
MERGE = "application/merge-patch+json"


def _pod(name: str, script: str, *paths: str, grace: int) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "busybox",
        "command": ["/bin/sh", "-c", script, "sh", *paths],  # whole-argument paths: the kubelet maps those
        "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}, {"name": "data", "mountPath": "/data"}],
    }
    volumes = [{"name": "conf", "configMap": {"name": "app"}}, {"name": "data", "emptyDir": {}}]
    spec = {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": grace}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def node(kube_api: KubeApi, tmp_path: Path) -> Any:
    kubelet = RelayKubelet(kube_api.url, kube_api.token, tmp_path / "node", sync_interval=0.2)
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", kubelet))
    try:
        yield kubelet
    finally:
        kubelet.close()


def test_a_pod_runs_with_its_volumes_and_is_killed_past_its_grace(kube_api: KubeApi, node: RelayKubelet) -> None:
    api = EmulatorApi(kube_api)
    ok(api, "POST", CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
                                 "data": {"greeting": "hello"}})  # fmt: skip
    # copies its config to the emptyDir every 0.1 s, ignores SIGTERM: only the SIGKILL at the grace stops it
    script = 'trap \'\' TERM; while true; do cat "$1" > "$2"; sleep 0.1; done'
    ok(api, "POST", PODS, _pod("p", script, "/etc/app/greeting", "/data/seen", grace=1))

    def running() -> dict[str, Any] | None:
        found = get(api, f"{PODS}/p")
        return found if found and (found.get("status") or {}).get("phase") == "Running" else None

    pod = wait_for(running)
    assert pod is not None
    assert pod["status"]["podIP"].startswith("127.244.")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
    run = node.pod("default", "p")
    assert run is not None and run.ip == pod["status"]["podIP"]
    seen = run.fs / "data" / "seen"
    wait_for(lambda: seen.exists() and seen.read_text() == "hello")
    ok(api, "PATCH", f"{CONFIGMAPS}/app", {"data": {"greeting": "updated"}}, MERGE)
    wait_for(lambda: seen.read_text() == "updated", timeout=10)  # projected into the running pod

    ok(api, "DELETE", f"{PODS}/p")
    wait_for(lambda: get(api, f"{PODS}/p") is None, timeout=10)
    (stop,) = node.exits
    assert stop.killed and stop.code == -9 and stop.stop_seconds is not None and stop.stop_seconds >= 1.0, stop
