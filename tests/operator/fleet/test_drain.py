"""Scale-down through the API emulator with two real relays standing in for the pods: the leaving pod is drained
(it refuses new mail), the StatefulSet keeps it while it holds a message the upstream cannot take yet, a drain
past its deadline is Degraded/DrainStuck, and once the message is delivered the StatefulSet shrinks."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import smtplib
from typing import Any

import pytest
from bench.peers.ports import closed_port, free_port

from crdgen.documents import smtprelay_crd
from relay_operator.fleet import drain
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.kube import Connection, Kube
from relay_operator.relays.render.common import ADMIN_PORT, Owner, selector_labels
from relay_operator.settings import Settings
from tests.harness.relay_proc import RelayProcess, relay_factory  # noqa: F401 (the fixture)
from tests.harness.waiting import wait_for
from tests.operator.relays.test_reconcile import Events
from tests.peers.kube import KubeApi

pytestmark = pytest.mark.peers


def _address() -> str:
    return f"127.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


async def _relay_body(kube: Kube) -> dict[str, Any]:
    body = await kube.get("SmtpRelay", "default", "outbound")
    assert body is not None
    return body


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == kind)


async def _relay_of_two(kube: Kube, token: str, queue: dict[str, Any]) -> Owner:
    """SmtpRelay `outbound` with 2 replicas and `queue`, and its admin token Secret (owned by it)."""
    relay_doc = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay",
                 "metadata": {"name": "outbound", "namespace": "default"},
                 "spec": {"replicas": 2, "queue": queue}}  # fmt: skip
    uid = (await kube.create(relay_doc))["metadata"]["uid"]
    ref = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "name": "outbound", "uid": uid,
           "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    meta = {"name": "outbound-admin-token", "namespace": "default", "ownerReferences": [ref]}
    await kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                       "data": {"token": base64.b64encode(token.encode()).decode()}})  # fmt: skip
    return Owner(name="outbound", namespace="default", uid=uid, generation=1)


async def _running_pod(kube: Kube, owner: Owner, ordinal: int, relay: RelayProcess, *, ready: bool) -> None:
    """Pod `outbound-<ordinal>` Running at the real relay's address (condition Ready True when `ready`)."""
    pod_meta = {"name": f"outbound-{ordinal}", "namespace": "default", "labels": selector_labels(owner)}
    containers = [{"name": "relay", "image": "relay:test"}]
    await kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": {"containers": containers}})
    status: dict[str, Any] = {"phase": "Running", "podIP": relay.http_host}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    await kube.patch("Pod", "default", f"outbound-{ordinal}", {"status": status}, subresource="status")


async def test_scale_down_waits_until_the_leaving_pod_is_empty(
    kube_api: KubeApi,
    relay_factory: Any,  # noqa: F811
    smtp_sink_factory: Any,
) -> None:
    kube_api._call(lambda: setattr(kube_api.emulator, "statefulset_controller", False))  # the test plays it
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", None))  # and the node: the relays are the pods
    kube_api.register_crd(smtprelay_crd())
    token, upstream = secrets.token_urlsafe(32), closed_port()
    relays: list[RelayProcess] = []
    for _ in range(2):
        spec = {"listeners": [{"name": "relay", "port": free_port()}], "clients": {"allowedNetworks": ["127.0.0.0/8"]},
                "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": upstream, "tls": "none"}]}},
                "queue": {"retry": {"schedule": ["1s"]}}}  # fmt: skip
        relay = relay_factory(spec, start=False, http_host=_address(), http_port=ADMIN_PORT)
        relay.admin_token_file.write_text(token + "\n")
        relay.start()
        relays.append(relay)
    leaving_port = relays[1].manifest.read_text().split("port: ", 1)[1].split("\n", 1)[0]
    with smtplib.SMTP("127.0.0.1", int(leaving_port), timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.net"], b"Subject: held\r\n\r\nwaits for the upstream\r\n")
    wait_for(lambda: relays[1].queue()["queue"]["deferred"] == 1, timeout=10)

    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as kube:
        owner = await _relay_of_two(kube, token, {"drainTimeout": "1s"})
        telemetry, settings = Telemetry(timeout=2.0), Settings()
        try:
            await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)  # the fleet of 2
            assert (await kube.get("StatefulSet", "default", "outbound") or {})["spec"]["replicas"] == 2
            for i, relay in enumerate(relays):
                await _running_pod(kube, owner, i, relay, ready=False)

            await kube.patch("SmtpRelay", "default", "outbound", {"spec": {"replicas": 1}})
            _, scale = await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)
            assert scale is not None and scale.replicas == 2 and scale.drain is not None
            assert scale.drain["waitingFor"] == ["outbound-1 (1 queued)"]
            statefulset = await kube.get("StatefulSet", "default", "outbound")
            assert statefulset is not None and statefulset["spec"]["replicas"] == 2, "kept while it holds mail"
            body = await _relay_body(kube)
            assert _condition(body, "Progressing")["reason"] == "Draining"
            assert body["status"]["drain"]["targetReplicas"] == 1
            with pytest.raises(smtplib.SMTPConnectError, match="421"):  # the leaving pod takes no new mail
                smtplib.SMTP("127.0.0.1", int(leaving_port), timeout=10)

            await asyncio.sleep(1.2)  # spec.queue.drainTimeout
            await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)
            stuck = _condition(await _relay_body(kube), "Degraded")
            assert (stuck["status"], stuck["reason"]) == ("True", "DrainStuck") and "outbound-1 (1 queued)" in stuck[
                "message"
            ]
            assert (await kube.get("StatefulSet", "default", "outbound") or {})["spec"]["replicas"] == 2

            sink = smtp_sink_factory(port=upstream)  # the upstream is back: the drained pod delivers its mail
            wait_for(lambda: sink.count() == 1 and relays[1].queue()["queue"]["total"] == 0, timeout=20)
            _, scale = await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)
            assert scale is not None and scale.replicas == 1 and scale.drain is None
            assert (await kube.get("StatefulSet", "default", "outbound") or {})["spec"]["replicas"] == 1
            body = await _relay_body(kube)
            assert "drain" not in body["status"] and _condition(body, "Degraded")["status"] == "False"
        finally:
            await telemetry.close()


@pytest.mark.parametrize("handoff", [True, False])
async def test_the_leaving_pod_hands_its_queue_to_the_ready_pod_that_stays(
    kube_api: KubeApi,
    relay_factory: Any,  # noqa: F811
    smtp_sink_factory: Any,
    handoff: bool,
) -> None:
    """The upstream is down: with the hand-off the scale-down completes anyway, and nothing is lost; with
    spec.queue.handoff false the leaving pod keeps its mail and the drain waits, as before the hand-off."""
    kube_api._call(lambda: setattr(kube_api.emulator, "statefulset_controller", False))
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", None))
    kube_api.register_crd(smtprelay_crd())
    token, upstream = secrets.token_urlsafe(32), closed_port()
    relays: list[RelayProcess] = []
    ports = [free_port(), free_port()]
    for port in ports:
        spec = {"listeners": [{"name": "relay", "port": port}], "clients": {"allowedNetworks": ["127.0.0.0/8"]},
                "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": upstream, "tls": "none"}]}},
                "queue": {"retry": {"schedule": ["1s"]}}}  # fmt: skip
        relay = relay_factory(spec, start=False, http_host=_address(), http_port=ADMIN_PORT, grace=30.0)
        relay.admin_token_file.write_text(token + "\n")
        relay.start()
        relays.append(relay)
    for i in range(5):
        with smtplib.SMTP("127.0.0.1", ports[1], timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.net"], f"Subject: held-{i}\r\n\r\nupstream down\r\n")
    wait_for(lambda: relays[1].queue()["queue"]["total"] == 5, timeout=10)

    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as kube:
        owner = await _relay_of_two(kube, token, {"handoff": handoff})
        telemetry, settings = Telemetry(timeout=2.0), Settings()
        try:
            await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)
            for i, relay in enumerate(relays):
                await _running_pod(kube, owner, i, relay, ready=True)

            await kube.patch("SmtpRelay", "default", "outbound", {"spec": {"replicas": 1}})
            events = Events()
            _, scale = await drain.reconcile(await _relay_body(kube), kube, settings, events, telemetry)
            assert scale is not None and scale.replicas == 2, "the first drain request starts the hand-off"
            progress = _condition(await _relay_body(kube), "Progressing")["message"]
            if not handoff:
                assert "(spec.queue.handoff is off: the pods deliver their mail themselves)" in progress, progress
                await asyncio.sleep(2)
                _, scale = await drain.reconcile(await _relay_body(kube), kube, settings, Events(), telemetry)
                assert scale is not None and scale.replicas == 2 and relays[1].queue()["queue"]["total"] == 5
                assert relays[1].queue()["handoff"]["running"] is False
                return
            assert "(handing off to 1 staying pod(s))" in progress, progress
            wait_for(lambda: relays[1].queue()["queue"]["total"] == 0, timeout=30)
            _, scale = await drain.reconcile(await _relay_body(kube), kube, settings, events, telemetry)
            assert scale is not None and scale.replicas == 1 and scale.drain is None, "shrunk with the upstream down"
            assert (await kube.get("StatefulSet", "default", "outbound") or {})["spec"]["replicas"] == 1
            assert relays[1].queue()["queue"]["handed_off_total"] == 5
            assert relays[0].queue()["queue"]["total"] == 5, "the staying pod holds them"
            reasons = [(reason, message) for _, reason, message in events.seen if reason in ("Draining", "Drained")]
            assert [r for r, _ in reasons] == ["Draining", "Drained"], events.seen
            assert "handing off to 1 staying pod(s)" in reasons[0][1]
            assert (
                reasons[1][1] == "outbound-1 empty: scaling from 2 to 1; 5 message(s) handed off to the pods that stay"
            )
        finally:
            await telemetry.close()
    sink = smtp_sink_factory(port=upstream)  # the upstream is back: the pod that stayed delivers all five
    sink.wait_for(5, timeout=30)
    assert sorted(str(m.email()["Subject"]) for m in sink.messages()) == [f"held-{i}" for i in range(5)]
