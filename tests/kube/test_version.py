"""/version answers the emulated Kubernetes version; discovery serves only that version's built-in APIs."""

from __future__ import annotations

import json
import urllib.request

from tests.kube.client import send
from tests.kube.control import ADMIN_TOKEN
from tests.kube.emulator import KubeEmulator
from tests.kube.server import ThreadedServer
from tests.peers.kube import KubeApi, kubectl


def test_version_and_discovery_default_to_1_31(kube_api: KubeApi) -> None:
    info = send(kube_api, "GET", "/version").body
    assert (info["major"], info["minor"], info["gitVersion"]) == ("1", "31", "v1.31.0")
    networking = {r["kind"] for r in send(kube_api, "GET", "/apis/networking.k8s.io/v1").body["resources"]}
    assert "NetworkPolicy" in networking and "IPAddress" not in networking  # IPAddress is GA from 1.33
    server = json.loads(kubectl(kube_api, "version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == "v1.31.0"


def _get(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def test_the_version_is_an_option() -> None:
    with ThreadedServer(KubeEmulator(kubernetes_version="1.33.0")) as server:
        with urllib.request.urlopen(_get(server.url + "/version"), timeout=10) as reply:
            assert json.loads(reply.read())["minor"] == "33"
        with urllib.request.urlopen(_get(server.url + "/apis/networking.k8s.io/v1"), timeout=10) as reply:
            assert "IPAddress" in {r["kind"] for r in json.loads(reply.read())["resources"]}
