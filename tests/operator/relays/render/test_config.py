"""The ConfigMap: the document the relay loads, with the very spec the operator validated."""

from __future__ import annotations

import base64

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay_operator.relays.render.config import build_configmap
from relay_operator.relays.render.domains import build_dkim_secret, relay_domains
from smtp_relay.config.domains import resolve_domains
from smtp_relay.config.manifest import decode_secret, load_documents
from tests.operator.relays.render.specs import FULL, OWNER


def test_configmap_round_trips_through_the_relays_loader() -> None:
    cm = build_configmap(OWNER, FULL)
    assert cm["metadata"]["name"] == "outbound-config"
    document = yaml.safe_load(cm["data"]["relay.yaml"])
    meta = {"name": "outbound", "namespace": "mail", "annotations": {"relayfleet.io/sending-domains": "included"}}
    assert document["kind"] == "SmtpRelay" and document["metadata"] == meta
    loaded = load_documents([document])
    assert loaded.spec == FULL
    assert loaded.domains == [] and loaded.domains_included, "no SendingDomain: the relay knows the set is empty"
    assert "null" not in cm["data"]["relay.yaml"]


def test_sending_domains_reach_the_relay_with_their_active_keys() -> None:
    """The operator's rendering of a relay's SendingDomains, read back by the relay's own loader."""
    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    domain = {
        "metadata": {"name": "example-com"},
        "spec": {"domain": "example.com", "relays": ["outbound"]},
        "status": {"verifiedForSending": True, "dkim": {"activeSelector": "rf1", "secretName": "example-com-dkim-rf1"},
                   "records": [{"purpose": "dkim", "status": "Success", "expected": "v=DKIM1; ..."}]},
    }  # fmt: skip
    other = {"metadata": {"name": "elsewhere"}, "spec": {"domain": "example.org", "relays": ["bulk"]}}
    key_secret = {"data": {"private.pem": base64.b64encode(pem).decode()}}
    domains = relay_domains(OWNER, [domain, other], {"example-com-dkim-rf1": key_secret})
    assert [d.name for d in domains] == ["example-com"], "only the domains naming this relay"
    documents = list(yaml.safe_load_all(build_configmap(OWNER, FULL, domains)["data"]["relay.yaml"]))
    loaded = load_documents(documents)
    assert loaded.domains_included and [d.spec.domain for d in loaded.domains] == ["example.com"]
    assert "expected" not in str(documents[1]["status"]), "only what the relay uses"
    secret = build_dkim_secret(OWNER, domains)
    assert secret["metadata"]["name"] == "outbound-dkim-keys" and list(secret["data"]) == ["example-com.private.pem"]
    mounted = decode_secret(secret)
    found = resolve_domains(loaded.domains, {"outbound-dkim-keys": mounted}).for_address_domain("example.com")
    assert found is not None and found.verified
    assert [(k.selector, k.algorithm, k.private_pem) for k in found.keys] == [("rf1", "rsa-sha256", pem)]
