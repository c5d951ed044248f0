"""replicaCount > 1: two operators (the real handlers, kopf in threads) peer through the chart's ClusterKopfPeering
on the API emulator, both as the chart's ServiceAccount with the chart's RBAC and the peering CRD from the chart.

Which operator reconciled an SmtpRelay shows in its StatefulSet: each operator renders a relay image of its own
(RELAYFLEET_RELAY_IMAGE). The older (higher priority) handles; the newer stays paused, so never writes; when the
older stops, it leaves the peering object and the newer takes over. Every peering grant is used, none missing.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import kopf
import pytest

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator import handlers
from relay_operator.cli import peering_priority
from relay_operator.handlers import wiring
from relay_operator.settings import Settings
from tests.harness.kopf_thread import KopfThread, fast_settings
from tests.harness.waiting import wait_for
from tests.kube.audit import bound_rules, rbac_diff
from tests.operator.handlers.test_e2e import GROUP, MERGE, EmulatorApi, get, ok
from tests.operator.handlers.test_rbac_audit import chart, install_rbac
from tests.peers.kube import KubeApi

NS = "default"
PEERING = "rf-relayfleet-relayfleet"
"""The chart's peering object for release rf in namespace relayfleet (<fullname>-<namespace>)."""
PEERINGS = f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}"


class PeeredOperator(KopfThread):
    """relay_operator's handlers in kopf peering, as one pod of the chart's Deployment with replicaCount > 1."""

    def __init__(self, identity: str, started: float, image: str) -> None:
        super().__init__(
            kopf.OperatorRegistry(),
            namespaces=[NS],
            peering=PEERING,
            priority=peering_priority(started, 0),
            identity=identity,
        )
        handlers.register(self.registry, Settings(relay_image=image, termination_grace_seconds=30))

        @kopf.on.startup(registry=self.registry)
        def fast(settings: kopf.OperatorSettings, **_: Any) -> None:
            fast_settings(settings, peering=True)


def relay(name: str) -> dict[str, Any]:
    return {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": name},
            "spec": {"listeners": [{"name": "smtp", "port": 2525}], "queue": {"ephemeral": True}}}  # fmt: skip


def image_of(admin: EmulatorApi, name: str) -> str | None:
    sts = get(admin, f"/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
    return None if sts is None else str(sts["spec"]["template"]["spec"]["containers"][0]["image"])


def peers(admin: EmulatorApi) -> set[str]:
    return set((get(admin, PEERINGS) or {}).get("status") or {})


def test_of_two_peered_operators_the_older_handles_and_the_newer_takes_over(kube_api: KubeApi) -> None:
    docs = chart("replicaCount=2")
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    (peering_crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    kube_api.register_crd(peering_crd)
    admin = EmulatorApi(kube_api)
    account = install_rbac(admin, docs)
    operator_api = EmulatorApi(kube_api.as_service_account("relayfleet", account))
    wiring.set_login(lambda **_: operator_api.login())
    older = PeeredOperator("operator-a", started=time.time() - 60, image="relay:from-a")
    newer = PeeredOperator("operator-b", started=time.time(), image="relay:from-b")
    try:
        older.start()
        wait_for(lambda: peers(admin) == {"operator-a"})  # created by the operator, then its keep-alive
        newer.start()
        wait_for(lambda: peers(admin) == {"operator-a", "operator-b"})
        ok(admin, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay("first"))
        assert wait_for(lambda: image_of(admin, "first")) == "relay:from-a"
        time.sleep(3)  # the paused operator would have patched its own image in by now (it reconciles at once)
        assert image_of(admin, "first") == "relay:from-a"
        older.stop()
        wait_for(lambda: peers(admin) == {"operator-b"})  # it removed itself on the way out
        ok(admin, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay("second"))
        assert wait_for(lambda: image_of(admin, "second"), timeout=20) == "relay:from-b"
    finally:
        for operator in (newer, older):
            if operator.thread.is_alive():
                operator.stop()
        wiring.set_login(None)
    # the patch grant is for the release's own peering object only: another release's is out of reach
    other = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "other-relayfleet-x"}}
    ok(admin, "POST", "/apis/kopf.dev/v1/clusterkopfpeerings", other)
    code, _ = operator_api.call("PATCH", "/apis/kopf.dev/v1/clusterkopfpeerings/other-relayfleet-x",
                                {"status": {"intruder": None}}, MERGE)  # fmt: skip
    assert code == 403
    requests = kube_api._call(lambda: kube_api.audit.requests(operator_api.api.user, allowed=True))
    refused = kube_api._call(lambda: kube_api.audit.requests(operator_api.api.user, allowed=False))
    assert [r.name for r in refused] == ["other-relayfleet-x"], f"the operators were refused: {refused}"
    peering_rules = [r for r in bound_rules(docs, "relayfleet", account) if r["apiGroups"] == ["kopf.dev"]]
    peering_requests = [r for r in requests if r.resource_request and r.group == "kopf.dev"]
    assert rbac_diff(peering_requests, peering_rules) == (set(), set())


def test_a_peer_that_died_holds_the_others_back_only_for_its_lifetime(kube_api: KubeApi) -> None:
    """A leader killed hard (no clean exit) leaves its entry: the survivor waits out its lifetime (kopf's 60 s
    by default; 8 s here), then removes it and handles."""
    docs = chart("replicaCount=2")
    for crd in (smtprelay_crd(), sendingdomain_crd(), *[d for d in docs if d["kind"] == "CustomResourceDefinition"]):
        kube_api.register_crd(crd)
    admin = EmulatorApi(kube_api)
    account = install_rbac(admin, docs)
    operator_api = EmulatorApi(kube_api.as_service_account("relayfleet", account))
    lastseen = datetime.datetime.now(datetime.UTC).isoformat()
    ghost = {"priority": peering_priority(time.time() - 3600, 0), "lifetime": 8, "lastseen": lastseen}
    ok(admin, "POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
       {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING},
        "status": {"killed-leader": ghost}})  # fmt: skip
    wiring.set_login(lambda **_: operator_api.login())
    survivor = PeeredOperator("operator-b", started=time.time(), image="relay:from-b")
    try:
        survivor.start()
        ok(admin, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay("during"))
        time.sleep(1.5)  # well within the dead leader's 8 s: the survivor would have reconciled by now if active
        assert image_of(admin, "during") is None, "handled while a live peer of higher priority was announced"
        assert wait_for(lambda: image_of(admin, "during"), timeout=25) == "relay:from-b"
        assert "killed-leader" not in peers(admin)
    finally:
        survivor.stop()
        wiring.set_login(None)


def test_a_peered_operator_without_the_peering_crd_stops_saying_what_is_missing(kube_api: KubeApi) -> None:
    """kopf would wait paused forever for a peering object that cannot exist: the startup fails instead (kopf
    run exits, the pod restarts), naming the object, the CRD and the chart value."""
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    wiring.set_login(lambda **_: EmulatorApi(kube_api).login())
    operator = PeeredOperator("operator-a", started=time.time(), image="relay:x")
    try:
        operator.thread.start()
        assert not operator.ready_flag.wait(timeout=5), "the operator started without its peering object"
    finally:
        operator.stop_flag.set()  # kopf waits for it in an executor thread, even after its startup failed
        operator.thread.join(timeout=operator.stop_timeout)
        wiring.set_login(None)
    assert not operator.thread.is_alive()
    cause = operator.error.__cause__ if operator.error is not None else None
    assert isinstance(cause, kopf.PermanentError), operator.error
    assert str(cause).startswith("cannot create ClusterKopfPeering 'rf-relayfleet-relayfleet' for --peering: ")
    assert "404" in str(cause) and "peering.installCRD" in str(cause)


@pytest.mark.parametrize(("older", "newer"), [(1_700_000_000.0, 1_700_000_000.001), (1_700_000_000.0, 1_800_000_000.0)])
def test_an_older_start_is_a_higher_priority(older: float, newer: float) -> None:
    assert peering_priority(older, 999) > peering_priority(newer, 0) > 0
    assert peering_priority(older, 0) != peering_priority(older, 1)  # same millisecond: the jitter decides
