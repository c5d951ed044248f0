"""An idle fleet's resync reads nothing from the API: the relay comes from kopf's watch, its StatefulSet and
pods from the watch cache (`fleet.observed`), and only the pods' admin ports are asked for queue figures.

Real relay processes stand in for the two pods, at the loopback addresses the emulator gave them, with the
admin token the operator generated; the operator runs as the chart's ServiceAccount, so the emulator's audit
tells its requests apart from the test's own.
"""

from __future__ import annotations

import base64
import collections
import smtplib
import time
from typing import Any

import pytest
from bench.peers.ports import free_port

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator.relays.render.common import ADMIN_PORT
from relay_operator.settings import Settings
from tests.harness.relay_proc import relay_factory  # noqa: F401 (the fixture)
from tests.harness.waiting import wait_for
from tests.operator.handlers.test_e2e import GROUP, EmulatorApi, Operator, get, ok
from tests.operator.handlers.test_rbac_audit import chart, install_rbac
from tests.peers.kube import KubeApi

pytestmark = pytest.mark.peers
NS, NAME = "default", "cached"


def _running_pods(admin: EmulatorApi) -> list[dict[str, Any]]:
    pods = ok(admin, "GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=app.kubernetes.io/instance%3D{NAME}")
    return [p for p in pods["items"] if (p.get("status") or {}).get("podIP")]


def test_an_idle_resync_reads_nothing_from_the_api(kube_api: KubeApi, relay_factory: Any) -> None:  # noqa: F811
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    admin = EmulatorApi(kube_api)
    account = install_rbac(admin, chart())
    operator_api = EmulatorApi(kube_api.as_service_account("relayfleet", account))
    relay_url = f"{GROUP}/namespaces/{NS}/smtprelays/{NAME}"
    with Operator(operator_api, NS, Settings(resync_seconds=1, termination_grace_seconds=30)):
        spec = {"replicas": 2, "queue": {"ephemeral": True}, "routing": {"default": {"capture": {}}}}
        body = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": NAME}, "spec": spec}
        ok(admin, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", body)
        pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(_running_pods(admin)), timeout=30)
        secret = wait_for(lambda: get(admin, f"/api/v1/namespaces/{NS}/secrets/{NAME}-admin-token"), timeout=30)
        token = base64.b64decode(secret["data"]["token"]).decode()
        smtp_port = free_port()
        for i, pod in enumerate(sorted(pods, key=lambda p: p["metadata"]["name"])):
            relay_spec = {
                "listeners": [{"name": "relay", "port": smtp_port if i == 0 else free_port()}],
                "clients": {"allowedNetworks": ["127.0.0.0/8"]},
                "routing": {"default": {"capture": {}}},
            }
            relay = relay_factory(relay_spec, start=False, http_host=pod["status"]["podIP"], http_port=ADMIN_PORT)
            relay.admin_token_file.write_text(token + "\n")
            relay.start()

        def queue() -> dict[str, Any]:
            return dict((ok(admin, "GET", relay_url).get("status") or {}).get("queue") or {})

        wait_for(lambda: queue().get("podsReporting") == 2, timeout=30)
        time.sleep(1.5)  # the pods' and StatefulSet's last events, and one more quiet resync
        kube_api._call(lambda: kube_api.audit.clear())
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
        rates = wait_for(lambda: (queue().get("ratesPerMinute") or {}).get("received"), timeout=20)
        assert rates > 0, "the resync kept reading the pods and wrote what they said into status.queue"
        time.sleep(2.5)  # a few more resyncs
        decisions = kube_api._call(lambda: dict(kube_api.audit.decisions))
    made = collections.Counter()
    for (attrs, _allowed), count in decisions.items():
        if attrs.user == operator_api.api.user and attrs.resource_request and attrs.verb != "watch":
            made[(attrs.verb, attrs.resource, attrs.subresource)] += count
    assert set(made) <= {("patch", "smtprelays", "status")}, f"an idle resync read the API: {dict(made)}"
    assert made[("patch", "smtprelays", "status")] >= 1, "status.queue was written with the pods' figures"
