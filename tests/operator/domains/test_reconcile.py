"""The SendingDomain reconcile through the real client on the emulator, against a real NSD: key Secrets, records
in status, conditions as the zone changes, a DNS outage, the whole rotation on a virtual clock, brought keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator.domains import reconcile as rec
from relay_operator.kube import Connection, Kube
from relay_operator.settings import Settings
from tests.operator.domains.dns import DOMAIN, EGRESS, expected, reload, zone
from tests.operator.relays.test_reconcile import Events
from tests.peers.dns import DnsServer, ZoneSpec
from tests.relay.dnscheck.keys import rsa_pem

NS = "default"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S1, S2 = "rf202612a", "rf202612b"
SETTINGS = Settings(domain_recheck_seconds=300, dns_outage_grace_seconds=3600)

pytestmark = pytest.mark.peers


@pytest.fixture
async def kube(kube_api: Any) -> AsyncIterator[Kube]:
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    async with Kube(Connection(server=kube_api.url, token=kube_api.token, insecure=True)) as client:
        yield client


async def create_domain(kube: Kube, server: DnsServer, **spec: Any) -> None:
    body = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain",
            "metadata": {"name": "example", "namespace": NS},
            "spec": {"domain": DOMAIN, "relays": ["outbound"], "spf": {"egressIps": [EGRESS]},
                     "dns": {"nameservers": [server.nameserver()]}, **spec}}  # fmt: skip
    await kube.create(body)


async def reread(kube: Kube) -> dict[str, Any]:
    body = await kube.get("SendingDomain", NS, "example")
    assert body is not None
    return body


async def run(kube: Kube, now: datetime, events: Events | None = None) -> rec.Result:
    return await rec.reconcile(await reread(kube), kube, SETTINGS, events or Events(), now=now)


def cond(body: dict[str, Any], kind: str) -> tuple[str, str, str]:
    found = next(c for c in body["status"]["conditions"] if c["type"] == kind)
    return found["status"], found["reason"], found["message"]


def reasons(events: Events) -> list[str]:
    return [reason for _, reason, _ in events.seen]


async def test_keys_records_conditions_outage_and_rotation(
    kube: Kube, dns_server_factory: Callable[[ZoneSpec], DnsServer]
) -> None:
    server = dns_server_factory({DOMAIN: zone()})
    await create_domain(kube, server)

    # 1. a key is generated as pending; its record is what the status says to publish
    events = Events()
    result = await run(kube, T0, events)
    assert reasons(events) == ["DkimKeyGenerated"]
    secret = await kube.get("Secret", NS, f"example-dkim-{S1}")
    assert secret is not None and set(secret["data"]) == {"private.pem"}
    assert secret["metadata"]["labels"]["relayfleet.io/dkim-selector"] == S1
    body = await reread(kube)
    status = body["status"]
    assert status["dkim"]["pendingSelector"] == S1 and "activeSelector" not in status["dkim"]
    assert status["verifiedForSending"] is False and result.relays == []
    assert cond(body, "DkimVerified")[:2] == ("False", "HostNotFound")
    assert f"publish {S1}._domainkey.{DOMAIN} TXT" in cond(body, "DkimVerified")[2]
    assert cond(body, "SpfAligned")[0] == "True" and cond(body, "DmarcPresent")[0] == "True"
    assert "PRIVATE KEY" not in json.dumps(status) and "PRIVATE KEY" not in json.dumps(events.seen)
    assert [r["purpose"] for r in status["records"]] == ["dkim", "spf", "dmarc"]
    assert status["nextCheck"] == "2026-12-01T12:05:00Z"

    # 2. the team publishes it: active, verified, the relays it names are to be reconciled
    key1 = expected(status, S1)
    reload(server, zone({S1: key1}))
    events = Events()
    result = await run(kube, T0 + timedelta(minutes=5), events)
    body = await reread(kube)
    assert reasons(events) == ["DkimKeyActivated", "Verified"] and result.relays == ["outbound"]
    assert body["status"]["verifiedForSending"] is True and cond(body, "Ready")[0] == "True"
    dkim = body["status"]["dkim"]
    assert (dkim["activeSelector"], dkim["secretName"], dkim["keyBits"]) == (S1, f"example-dkim-{S1}", 2048)
    assert dkim["activatedAt"] == "2026-12-01T12:05:00Z" and "pendingSelector" not in dkim

    # 3. DNS down: TemporaryFailure, still verified within the grace, checks back off
    server.stop()
    result = await run(kube, T0 + timedelta(minutes=10))
    body = await reread(kube)
    assert {r["status"] for r in body["status"]["records"]} == {"TemporaryFailure"}
    assert body["status"]["verifiedForSending"] is True and result.relays == []
    assert cond(body, "Ready")[:2] == ("True", "DnsOutageGrace") and cond(body, "DkimVerified")[0] == "Unknown"
    assert body["status"]["nextCheck"] == "2026-12-01T12:20:00Z"
    reload(server, zone({S1: key1}))

    # 4. rotation asked by annotation: S2 pending while S1 keeps signing
    await kube.patch("SendingDomain", NS, "example", {"metadata": {"annotations": {rec.ROTATE_ANNOTATION: "1"}}})
    events = Events()
    await run(kube, T0 + timedelta(days=1), events)
    body = await reread(kube)
    assert reasons(events) == ["DkimKeyGenerated"]
    dkim = body["status"]["dkim"]
    assert (dkim["activeSelector"], dkim["pendingSelector"], dkim["rotateRequest"]) == (S1, S2, "1")
    assert body["status"]["verifiedForSending"] is True, "the pending key is not required while S1 signs"
    pending_row = next(r for r in body["status"]["records"] if r["name"].startswith(S2))
    assert pending_row["required"] is False and pending_row["status"] == "Failed"
    assert "next key" in cond(body, "DkimVerified")[2] and cond(body, "DkimVerified")[0] == "True"

    # 5. S2 published: S2 signs, S1 revoked (its record stays)
    reload(server, zone({S1: key1, S2: expected(body["status"], S2)}))
    events = Events()
    result = await run(kube, T0 + timedelta(days=2), events)
    body = await reread(kube)
    assert reasons(events) == ["DkimKeyActivated", "DkimKeyRevoked"] and result.relays == ["outbound"]
    dkim = body["status"]["dkim"]
    assert (dkim["activeSelector"], dkim["revokedSelector"], dkim["safeToRemoveRevoked"]) == (S2, S1, False)
    assert dkim["secretName"] == f"example-dkim-{S2}" and dkim["revokedAt"] == "2026-12-03T12:00:00Z"

    # 6. once no queued message can need it (the relay's queue.retry.maxAge: 2d), S1's Secret goes
    await kube.create({"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay",
                       "metadata": {"name": "outbound", "namespace": NS},
                       "spec": {"queue": {"retry": {"maxAge": "2d"}}}})  # fmt: skip
    await run(kube, T0 + timedelta(days=3))
    assert (await reread(kube))["status"]["dkim"]["safeToRemoveRevoked"] is False
    assert await kube.get("Secret", NS, f"example-dkim-{S1}") is not None
    events = Events()
    await run(kube, T0 + timedelta(days=4, seconds=1), events)
    dkim = (await reread(kube))["status"]["dkim"]
    assert reasons(events) == ["DkimRevokedKeySafeToRemove"] and dkim["safeToRemoveRevoked"] is True
    assert await kube.get("Secret", NS, f"example-dkim-{S1}") is None
    assert await kube.get("Secret", NS, f"example-dkim-{S2}") is not None


async def test_a_lost_key_secret_is_replaced_by_a_new_pending_key(
    kube: Kube, dns_server_factory: Callable[[ZoneSpec], DnsServer]
) -> None:
    server = dns_server_factory({DOMAIN: zone()})
    await create_domain(kube, server, dkim={"ed25519": True, "keyBits": 1024})
    await run(kube, T0)
    status = (await reread(kube))["status"]
    reload(server, zone({S1: expected(status, S1), f"{S1}-ed": expected(status, f"{S1}-ed")}))
    await run(kube, T0 + timedelta(minutes=1))
    dkim = (await reread(kube))["status"]["dkim"]
    assert (dkim["activeSelector"], dkim["ed25519Selector"], dkim["keyBits"]) == (S1, f"{S1}-ed", 1024)
    await kube.delete("Secret", NS, f"example-dkim-{S1}")
    events = Events()
    await run(kube, T0 + timedelta(minutes=2), events)
    body = await reread(kube)
    assert reasons(events) == ["DkimKeyLost", "DkimKeyGenerated", "Unverified"]
    assert body["status"]["dkim"]["pendingSelector"] == S2 and body["status"]["verifiedForSending"] is False


async def test_a_brought_key_is_only_verified_and_a_missing_secret_names_the_field(
    kube: Kube, dns_server_factory: Callable[[ZoneSpec], DnsServer]
) -> None:
    from smtp_relay.dnscheck.dkim_keys import public_txt_from_pem

    server = dns_server_factory({DOMAIN: zone({"team": public_txt_from_pem(rsa_pem())})})
    await create_domain(kube, server, dkim={"selector": "team", "secretName": "team-key"})
    await run(kube, T0)
    body = await reread(kube)
    status, reason, message = cond(body, "DkimVerified")
    assert (status, reason) == ("False", "DkimKeySecretMissing") and message.startswith("spec.dkim.secretName:")
    assert body["status"]["verifiedForSending"] is False
    await kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-key", "namespace": NS},
                       "stringData": {"private.pem": rsa_pem().decode()}})  # fmt: skip
    events = Events()
    await run(kube, T0 + timedelta(minutes=1), events)
    body = await reread(kube)
    assert body["status"]["verifiedForSending"] is True and cond(body, "DkimVerified")[0] == "True"
    dkim = body["status"]["dkim"]
    assert (dkim["activeSelector"], dkim["secretName"]) == ("team", "team-key")
    assert "DkimKeyGenerated" not in reasons(events)
    assert await kube.get("Secret", NS, f"example-dkim-{S1}") is None, "never generated for a brought key"


async def test_only_named_relays_that_exist_are_reconciled(kube: Kube) -> None:
    await kube.create({"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay",
                       "metadata": {"name": "outbound", "namespace": NS}, "spec": {}})  # fmt: skip
    seen: list[str] = []

    async def one(body: dict[str, Any]) -> None:
        seen.append(body["metadata"]["name"])

    assert await rec.reconcile_relays(kube, NS, ["missing", "outbound", "outbound"], one) == ["outbound"]
    assert seen == ["outbound"]
