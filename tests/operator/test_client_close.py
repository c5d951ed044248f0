"""After shutdown, the operator's HTTP clients stay closed: a handler still running then gets a clear error
instead of opening a session nobody closes (pytest reported those as unclosed-session warnings)."""

from __future__ import annotations

import aiohttp
import pytest

from relay_operator.fleet.telemetry import Telemetry
from relay_operator.kube import Connection, Kube
from tests.peers.kube import KubeApi


async def test_a_closed_kube_client_refuses_requests_and_opens_no_session(kube_api: KubeApi) -> None:
    kube = Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True))
    assert await kube.get("ConfigMap", "default", "absent") is None
    await kube.close()
    with pytest.raises(aiohttp.ClientConnectionError, match="the operator is stopping"):
        await kube.get("ConfigMap", "default", "absent")
    assert kube._session is None


async def test_a_closed_telemetry_answers_stopping_without_a_session() -> None:
    telemetry = Telemetry(timeout=1.0)
    await telemetry.close()
    pod = {"metadata": {"name": "p-0"}, "status": {"phase": "Running", "podIP": "127.244.0.2"}}
    assert await telemetry.call(pod, "GET", "/queue", "token") == (None, "operator stopping")
    assert telemetry._session is None
