"""The operator's /metrics, scraped over HTTP from an operator (all its handlers, kopf in a thread) running on the
API emulator: handler runs counted and timed, SmtpRelays and SendingDomains by condition as the statuses the
operator wrote say, per-relay replicas, and a deleted object's series gone with it."""

from __future__ import annotations

import base64
import logging
import random
import smtplib
import urllib.request
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from bench.peers.ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from relay_operator import handlers
from relay_operator.handlers import wiring
from relay_operator.handlers.observe import MetricsEndpoint
from relay_operator.relays.render.common import ADMIN_PORT
from relay_operator.settings import Settings
from tests.harness.kopf_thread import KopfThread, fast_settings
from tests.harness.relay_proc import relay_factory  # noqa: F401 (the fixture)
from tests.harness.waiting import wait_for
from tests.operator.domains.dns import DOMAIN, EGRESS, expected, reload, zone
from tests.operator.handlers.test_e2e import GROUP, MERGE, EmulatorApi, emulator, get, ok  # noqa: F401
from tests.peers.dns import DnsServer, ZoneSpec
from tests.peers.kube import KubeApi

NS = "default"
RELAY = f"{GROUP}/namespaces/{NS}/smtprelays/outbound"
SD = f"{GROUP}/namespaces/{NS}/sendingdomains/example"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MeteredOperator(KopfThread):
    """The operator as `relayfleet-operator` runs it, metrics served (on a free loopback port)."""

    def __init__(self, api: EmulatorApi, settings: Settings) -> None:
        super().__init__(kopf.OperatorRegistry(), namespaces=[NS])
        endpoint = handlers.register(self.registry, settings, serve_metrics=True)
        assert endpoint is not None
        self.endpoint: MetricsEndpoint = endpoint
        wiring.set_login(lambda **_: api.login())

        @kopf.on.startup(registry=self.registry)
        def fast(settings: kopf.OperatorSettings, **_: Any) -> None:
            fast_settings(settings)
            settings.posting.level = logging.INFO

    def __enter__(self) -> MeteredOperator:
        self.start()
        wait_for(lambda: self.endpoint.port != 0)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            wiring.set_login(None)

    def scrape(self) -> Samples:
        url = f"http://127.0.0.1:{self.endpoint.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def settings(**overrides: Any) -> Settings:
    return Settings(metrics_host="127.0.0.1", metrics_port=0, termination_grace_seconds=30, **overrides)


def test_reconciles_conditions_and_replicas_on_metrics(emulator: EmulatorApi) -> None:  # noqa: F811
    relay = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": "outbound"},
             "spec": {"replicas": 2}}  # fmt: skip
    with MeteredOperator(emulator, settings()) as operator:
        empty = operator.scrape()
        assert value(empty, "relayfleet_operator_objects", kind="SmtpRelay") == 0
        assert value(empty, "relayfleet_operator_objects", kind="SendingDomain") == 0
        assert value(empty, "relayfleet_operator_objects_by_condition", kind="SmtpRelay", condition="Ready",
                     status="True") == 0  # fmt: skip

        ok(emulator, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay)
        ready = {"kind": "SmtpRelay", "condition": "Ready", "status": "True"}
        samples = wait_for(
            lambda: (
                (s := operator.scrape()) and value(s, "relayfleet_operator_objects_by_condition", **ready) == 1 and s
            )
        )
        assert value(samples, "relayfleet_operator_objects", kind="SmtpRelay") == 1
        assert value(samples, "relayfleet_operator_objects_by_condition", **{**ready, "status": "False"}) == 0
        assert value(samples, "relayfleet_operator_objects_by_condition", kind="SmtpRelay", condition="Degraded",
                     status="False") == 1  # fmt: skip
        per_object = {"kind": "SmtpRelay", "namespace": NS, "name": "outbound", "condition": "Ready"}
        assert value(samples, "relayfleet_operator_condition", **per_object, status="True", reason="AllReplicasReady")
        assert value(samples, "relayfleet_operator_relay_replicas", namespace=NS, name="outbound") == 2
        assert value(samples, "relayfleet_operator_relay_ready_replicas", namespace=NS, name="outbound") == 2
        runs = {"kind": "SmtpRelay", "handler": "relay_changed"}
        succeeded = value(samples, "relayfleet_operator_reconciles_total", **runs, result="success") or 0
        assert succeeded >= 1
        timed = value(samples, "relayfleet_operator_reconcile_duration_seconds_count", **runs)
        retried = value(samples, "relayfleet_operator_reconciles_total", **runs, result="retry") or 0
        assert timed == succeeded + retried, "every run is timed"
        assert (value(samples, "relayfleet_operator_reconcile_duration_seconds_sum", **runs) or 0) > 0

        # a Secret that is missing degrades the relay: the metrics follow the status, reason and all
        ok(emulator, "PATCH", RELAY, {"spec": {"tls": {"secretName": "missing-tls"}}}, MERGE)
        degraded = {"kind": "SmtpRelay", "condition": "Degraded", "status": "True"}
        samples = wait_for(
            lambda: (s := operator.scrape()) and value(s, "relayfleet_operator_objects_by_condition", **degraded) == 1
            and s
        )  # fmt: skip
        assert value(samples, "relayfleet_operator_condition", **{**per_object, "condition": "Degraded"},
                     status="True", reason="SecretNotFound") == 1  # fmt: skip
        assert (value(samples, "relayfleet_operator_reconciles_total", **runs, result="success") or 0) > succeeded

        # deleted: its series go with it
        ok(emulator, "DELETE", RELAY)
        samples = wait_for(
            lambda: (s := operator.scrape()) and value(s, "relayfleet_operator_objects", kind="SmtpRelay") == 0 and s
        )
        assert not [key for key in samples if ("name", "outbound") in key[1]], "no series of a deleted relay"
        assert value(samples, "relayfleet_operator_objects_by_condition", **ready) == 0


@pytest.mark.peers
def test_domains_by_verdict_on_metrics(
    emulator: EmulatorApi,  # noqa: F811
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
) -> None:
    server = dns_server_factory({DOMAIN: zone()})
    domain = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain", "metadata": {"name": "example"},
              "spec": {"domain": DOMAIN, "relays": [], "spf": {"egressIps": [EGRESS]}}}  # fmt: skip
    with MeteredOperator(emulator, settings(dns_nameservers=server.nameserver(), domain_recheck_seconds=3600)) as op:
        ok(emulator, "POST", f"{GROUP}/namespaces/{NS}/sendingdomains", domain)
        pending = wait_for(
            lambda: ((get(emulator, SD) or {}).get("status") or {}).get("dkim", {}).get("pendingSelector")
        )
        not_ready = {"kind": "SendingDomain", "condition": "Ready", "status": "False"}
        samples = wait_for(
            lambda: (s := op.scrape()) and value(s, "relayfleet_operator_objects_by_condition", **not_ready) == 1 and s
        )
        assert value(samples, "relayfleet_operator_domain_verified", namespace=NS, name="example") == 0
        assert value(samples, "relayfleet_operator_condition", kind="SendingDomain", namespace=NS, name="example",
                     condition="Ready", status="False", reason="RecordsMissing") == 1  # fmt: skip
        assert value(samples, "relayfleet_operator_objects", kind="SendingDomain") == 1
        runs = {"kind": "SendingDomain", "handler": "domain_changed", "result": "success"}
        assert (value(samples, "relayfleet_operator_reconciles_total", **runs) or 0) >= 1

        # the key published and a recheck asked: verified, on the metrics too
        reload(server, zone({pending: expected((get(emulator, SD) or {})["status"], pending)}))
        ok(emulator, "PATCH", SD, {"metadata": {"annotations": {"relayfleet.io/recheck": "1"}}}, MERGE)
        samples = wait_for(
            lambda: (s := op.scrape()) and value(s, "relayfleet_operator_domain_verified", namespace=NS, name="example")
            == 1 and s
        )  # fmt: skip
        ready = {**not_ready, "status": "True"}
        assert value(samples, "relayfleet_operator_objects_by_condition", **ready) == 1
        assert value(samples, "relayfleet_operator_objects_by_condition", **not_ready) == 0


class IdleKubelet:
    """Leaves the pods Pending: the test runs the relay process and reports the pod Running itself."""

    def start(self, pod: dict[str, Any], node: Any) -> None:
        pass

    def stop(self, pod: dict[str, Any], grace: int, node: Any) -> None:
        node.stopped(pod["metadata"]["namespace"], pod["metadata"]["name"])


@pytest.mark.peers
def test_the_queue_as_the_operator_reads_it_from_the_pods(
    kube_api: KubeApi,
    emulator: EmulatorApi,  # noqa: F811
    relay_factory: Any,  # noqa: F811
) -> None:
    """A real relay stands in for the pod outbound-0 at its own loopback address; its upstream refuses, so three
    messages stay queued. The resync timer reads the pod's /queue into status.queue, and the metrics show it."""
    kube_api._call(lambda: setattr(kube_api.emulator, "kubelet", IdleKubelet()))
    relay = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": "outbound"},
             "spec": {"replicas": 1}}  # fmt: skip
    with MeteredOperator(emulator, settings(resync_seconds=1)) as operator:
        ok(emulator, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay)
        secret = wait_for(lambda: get(emulator, f"/api/v1/namespaces/{NS}/secrets/outbound-admin-token"))
        wait_for(lambda: get(emulator, f"/api/v1/namespaces/{NS}/pods/outbound-0"))
        smtp, closed = free_port(), free_port()  # nothing listens on `closed`: every delivery is deferred
        upstream = {"host": "127.0.0.1", "port": closed, "tls": "none"}
        spec = {"listeners": [{"name": "relay", "port": smtp}], "clients": {"allowedNetworks": ["127.0.0.0/8"]},
                "routing": {"default": {"smarthosts": [upstream]}}}  # fmt: skip
        address = f"127.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        process = relay_factory(spec, start=False, http_host=address, http_port=ADMIN_PORT)
        process.admin_token_file.write_text(base64.b64decode(secret["data"]["token"]).decode() + "\n")
        process.start()
        for _ in range(3):
            with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
                client.sendmail("a@example.com", ["b@example.net"], b"Subject: queued\r\n\r\nhi\r\n")
        running = {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}],
                   "conditions": [{"type": "Ready", "status": "True"}]}  # fmt: skip
        ok(emulator, "PATCH", f"/api/v1/namespaces/{NS}/pods/outbound-0/status", {"status": running}, MERGE)
        relay_labels = {"namespace": NS, "name": "outbound"}
        samples = wait_for(
            lambda: (s := operator.scrape()) and value(s, "relayfleet_operator_relay_queue_depth", **relay_labels) == 3
            and s,
            timeout=30,
        )  # fmt: skip
        assert (get(emulator, RELAY) or {})["status"]["queue"]["depth"] == 3, "the figure is the status's"
        assert value(samples, "relayfleet_operator_relay_pods_unreachable", **relay_labels) == 0
        oldest = value(samples, "relayfleet_operator_relay_queue_oldest_age_seconds", **relay_labels)
        later = (get(emulator, RELAY) or {})["status"]["queue"]["oldestAgeSeconds"]  # read after the scrape: older
        assert oldest is not None and 0 <= oldest <= later
        resyncs = value(samples, "relayfleet_operator_reconciles_total", kind="SmtpRelay", handler="resync",
                        result="success")  # fmt: skip
        assert resyncs is not None and resyncs >= 1
