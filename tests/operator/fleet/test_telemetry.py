"""The operator reads real relays' queue figures: two relay processes stand in for an SmtpRelay's pods, each at
its own loopback address on the admin port (as pods have their own IP), listed through the API emulator."""

from __future__ import annotations

import base64
import random
import secrets
import smtplib
from typing import Any

import pytest
from bench.peers.ports import free_port

from relay_operator.fleet.telemetry import Telemetry
from relay_operator.kube import Connection, Kube
from relay_operator.relays.render.common import ADMIN_PORT, Owner, selector_labels
from tests.harness.relay_proc import RelayProcess, relay_factory  # noqa: F401 (the fixture)
from tests.peers.kube import KubeApi

pytestmark = pytest.mark.peers
OWNER = Owner(name="outbound", namespace="default", uid="uid-1", generation=1)


def _pod_address() -> str:
    return f"127.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


async def _pod(kube: Kube, name: str, ip: str | None) -> None:
    labels = selector_labels(OWNER)
    spec = {"containers": [{"name": "relay", "image": "relay:test"}]}
    await kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                                                                        "labels": labels}, "spec": spec})  # fmt: skip
    if ip is not None:
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        await kube.patch("Pod", "default", name, {"status": status}, subresource="status")


async def test_queue_figures_of_every_pod_into_status_queue(kube_api: KubeApi, relay_factory: Any) -> None:  # noqa: F811
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", None))  # the test plays the node: pods stay put
    token = secrets.token_urlsafe(32)
    relays: list[RelayProcess] = []
    smtp_ports = []
    for _ in range(2):
        port = free_port()
        spec = {"listeners": [{"name": "relay", "port": port}], "clients": {"allowedNetworks": ["127.0.0.0/8"]},
                "routing": {"default": {"capture": {}}}}  # fmt: skip
        relay = relay_factory(spec, start=False, http_host=_pod_address(), http_port=ADMIN_PORT)
        relay.admin_token_file.write_text(token + "\n")
        relay.start()
        relays.append(relay)
        smtp_ports.append(port)
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", smtp_ports[0], timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as kube:
        meta = {"name": "outbound-admin-token", "namespace": "default"}
        data = {"token": base64.b64encode(token.encode()).decode()}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}
        await kube.create(secret)
        for i, relay in enumerate(relays):
            await _pod(kube, f"outbound-{i}", relay.http_host)
        await _pod(kube, "outbound-2", None)  # not running yet
        await _pod(kube, "outbound-3", _pod_address())  # running, but nothing answers there
        telemetry = Telemetry(concurrency=2, timeout=2.0)
        try:
            first = await telemetry.queue_status(kube, OWNER)
            assert first["podsReporting"] == 2 and first["podsUnreachable"] == 2
            assert first["unreachable"][0] == "outbound-2: not running (Pending)"
            assert first["unreachable"][1].startswith("outbound-3: ")
            assert first["depth"] == 0 and first["quarantined"] == 0 and "ratesPerMinute" not in first
            by_digest = {d: names for d, names in first["configDigests"].items()}
            assert sorted(n for names in by_digest.values() for n in names) == ["outbound-0", "outbound-1"]
            assert all(len(digest) == 16 for digest in by_digest), "each pod says which config it loaded"
            with smtplib.SMTP("127.0.0.1", smtp_ports[1], timeout=10) as client:
                client.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
            second = await telemetry.queue_status(kube, OWNER)
            rates = second["ratesPerMinute"]
            assert rates["received"] > 0 and rates["bounced"] == 0, rates
            relays[1].admin_token_file.write_text("another-token-of-enough-length\n")  # rotated behind our back
            third = await telemetry.queue_status(kube, OWNER)
            assert third["podsReporting"] == 1 and "outbound-1: 401 Unauthorized" in third["unreachable"]
        finally:
            await telemetry.close()
