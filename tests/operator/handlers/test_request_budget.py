"""What one SmtpRelay costs the API from its create to an idle resync: the requests that scale with a fleet.

At a thousand relays each request per relay is a thousand requests (bench/operator_scale.py measures them);
these two were paid per relay and are not any more: a status write for every move of the StatefulSet's status
while its pods start one by one (now one refresh per burst, `handlers/children.py`), and a read of the
admin-token Secret at the first resync although the reconcile had just created it (now handed over).
"""

from __future__ import annotations

import collections
import time

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator.settings import Settings
from tests.harness.waiting import wait_for
from tests.operator.handlers.test_e2e import GROUP, EmulatorApi, Operator, condition, get, ok
from tests.peers.kube import KubeApi

NS, NAME = "default", "budget"


def test_a_relay_starting_three_pods_costs_few_status_writes_and_no_token_read(kube_api: KubeApi) -> None:
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    api = EmulatorApi(kube_api)
    path = f"{GROUP}/namespaces/{NS}/smtprelays/{NAME}"
    with Operator(api, NS, Settings(resync_seconds=2, termination_grace_seconds=30)):
        spec = {"replicas": 3, "routing": {"default": {"capture": {}}}}
        body = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": NAME}, "spec": spec}
        ok(api, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", body)

        def ready() -> bool:
            relay = get(api, path)
            return condition(relay, "Ready").get("status") == "True" and relay["status"]["readyReplicas"] == 3

        wait_for(ready, timeout=30)
        time.sleep(5)  # the last refresh, and two resyncs with the pods' (unreachable) queue figures
        decisions = kube_api._call(lambda: dict(kube_api.audit.decisions))
    made: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
    for (attrs, _allowed), count in decisions.items():
        if attrs.resource_request and attrs.verb != "watch":
            made[(attrs.verb, attrs.resource, attrs.subresource, attrs.name)] += count
    status_writes = made[("patch", "smtprelays", "status", NAME)]
    assert 1 <= status_writes <= 3, f"one per burst of the StatefulSet's status and one for the queue: {status_writes}"
    assert made[("get", "secrets", "", f"{NAME}-admin-token")] == 0, "the token the reconcile created was read back"
    assert made[("create", "secrets", "", "")] == 2, "the admin token and the DKIM keys, each created once"
