"""End to end: the operator (all its handlers, kopf in a thread) keeps a SendingDomain against the emulator
and a real NSD serving the domain's zone, as a team would meet it: `kubectl get sd`, the records to publish,
the verdict flipping as the zone is edited, a DNS outage, the recheck annotation, the timer, deletion."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from relay_operator.settings import Settings
from tests.harness.waiting import wait_for
from tests.operator.domains.dns import DOMAIN, EGRESS, expected, reload, zone
from tests.operator.handlers.test_e2e import GROUP, MERGE, EmulatorApi, Operator, emulator, get, ok  # noqa: F401
from tests.peers.dns import DnsServer, ZoneSpec

pytestmark = pytest.mark.peers
NS = "default"
SD = f"{GROUP}/namespaces/{NS}/sendingdomains/example"


def domain(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain", "metadata": {"name": "example"},
            "spec": {"domain": DOMAIN, "relays": ["outbound"], "spf": {"egressIps": [EGRESS]}, **spec}}  # fmt: skip


def status(api: EmulatorApi) -> dict[str, Any]:
    return dict((get(api, SD) or {}).get("status") or {})


def columns(api: EmulatorApi) -> list[str]:
    lines = api.kubectl("get", "-n", NS, "sd", "example").splitlines()
    assert lines[0].split() == ["NAME", "VERIFIED", "DKIM", "SPF", "DMARC", "AGE"], lines
    return lines[1].split()


def recheck(api: EmulatorApi, value: str) -> None:
    ok(api, "PATCH", SD, {"metadata": {"annotations": {"relayfleet.io/recheck": value}}}, MERGE)


def test_a_domain_from_creation_to_deletion(
    emulator: EmulatorApi,  # noqa: F811
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
) -> None:
    server = dns_server_factory({DOMAIN: zone()})
    settings = Settings(dns_nameservers=server.nameserver(), domain_recheck_seconds=3600, termination_grace_seconds=30)
    relay = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": "outbound"}, "spec": {}}
    with Operator(emulator, NS, settings):
        ok(emulator, "POST", f"{GROUP}/namespaces/{NS}/smtprelays", relay)
        ok(emulator, "POST", f"{GROUP}/namespaces/{NS}/sendingdomains", domain())
        pending = wait_for(lambda: status(emulator).get("dkim", {}).get("pendingSelector"))
        secret = ok(emulator, "GET", f"/api/v1/namespaces/{NS}/secrets/example-dkim-{pending}")
        assert b"PRIVATE KEY" in base64.b64decode(secret["data"]["private.pem"])
        assert secret["metadata"]["ownerReferences"][0]["kind"] == "SendingDomain"
        assert columns(emulator)[1:5] == ["false", "False", "True", "True"]
        events = ok(emulator, "GET", f"/api/v1/namespaces/{NS}/events")["items"]
        assert "DkimKeyGenerated" in [e["reason"] for e in events if e["involvedObject"]["name"] == "example"]

        # the team publishes the key the status shows; the recheck annotation checks at once (timer: 1 h)
        reload(server, zone({pending: expected(status(emulator), pending)}))
        recheck(emulator, "1")
        wait_for(lambda: status(emulator).get("verifiedForSending") is True)
        assert status(emulator)["dkim"]["activeSelector"] == pending
        assert status(emulator)["dkim"]["secretName"] == f"example-dkim-{pending}"
        assert columns(emulator)[1:5] == ["true", "True", "True", "True"]

        # the SPF record loses the fleet: unverified, with what to publish
        reload(server, zone({pending: expected(status(emulator), pending)}, spf=False))
        recheck(emulator, "2")
        wait_for(lambda: status(emulator).get("verifiedForSending") is False)
        spf = next(c for c in status(emulator)["conditions"] if c["type"] == "SpfAligned")
        assert spf["status"] == "False" and f"publish {DOMAIN} TXT" in spf["message"]
        assert columns(emulator)[1:5] == ["false", "True", "False", "True"]
        reload(server, zone({pending: expected(status(emulator), pending)}))
        recheck(emulator, "3")
        wait_for(lambda: status(emulator).get("verifiedForSending") is True)

        # DNS stopped: TemporaryFailure, still verified (grace 24 h)
        server.stop()
        recheck(emulator, "4")
        wait_for(lambda: {r["status"] for r in status(emulator).get("records") or []} == {"TemporaryFailure"})
        assert status(emulator)["verifiedForSending"] is True

        # deletion: no finalizer to wait for, the key Secret goes by its ownerReference
        ok(emulator, "DELETE", SD)
        wait_for(lambda: get(emulator, SD) is None)
        wait_for(lambda: get(emulator, f"/api/v1/namespaces/{NS}/secrets/example-dkim-{pending}") is None)


def test_the_timer_rechecks_when_next_check_is_due(
    emulator: EmulatorApi,  # noqa: F811
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
) -> None:
    server = dns_server_factory({DOMAIN: zone()})
    settings = Settings(domain_recheck_seconds=0.5, termination_grace_seconds=30)
    with Operator(emulator, NS, settings):
        ok(
            emulator,
            "POST",
            f"{GROUP}/namespaces/{NS}/sendingdomains",
            domain(dns={"nameservers": [server.nameserver()]}),
        )
        pending = wait_for(lambda: status(emulator).get("dkim", {}).get("pendingSelector"))
        reload(server, zone({pending: expected(status(emulator), pending)}))
        wait_for(lambda: status(emulator).get("verifiedForSending") is True, timeout=20)
