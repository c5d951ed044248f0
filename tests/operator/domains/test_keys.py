"""Key Secret manifests: name, labels, owner, content; their public records; no key material in reprs."""

from __future__ import annotations

import base64

import pytest

from relay_operator.domains.keys import Domain, KeyPair, build_key_secret, generate, public_keys
from smtp_relay.dnscheck.dkim_keys import public_txt_from_pem
from tests.relay.dnscheck.keys import ed25519_pem, rsa_pem

DOMAIN = Domain(name="example", namespace="mail", uid="sd-uid")


def test_a_key_secret_is_owned_labelled_and_holds_the_pems() -> None:
    secret = build_key_secret(DOMAIN, "rf202612a", KeyPair(rsa_pem(), ed25519_pem()))
    meta = secret["metadata"]
    assert (secret["kind"], secret["type"], meta["name"], meta["namespace"]) == (
        "Secret", "Opaque", "example-dkim-rf202612a", "mail")  # fmt: skip
    assert meta["labels"] == {
        "app.kubernetes.io/name": "relayfleet-dkim",
        "app.kubernetes.io/instance": "example",
        "app.kubernetes.io/managed-by": "relayfleet-operator",
        "app.kubernetes.io/part-of": "relayfleet",
        "relayfleet.io/sending-domain": "example",
        "relayfleet.io/dkim-selector": "rf202612a",
    }
    assert meta["ownerReferences"] == [{"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain",
                                        "name": "example", "uid": "sd-uid", "controller": True,
                                        "blockOwnerDeletion": True}]  # fmt: skip
    assert base64.b64decode(secret["data"]["private.pem"]) == rsa_pem()
    assert base64.b64decode(secret["data"]["ed25519.pem"]) == ed25519_pem()
    found = public_keys(secret, "rf202612a")
    assert found.records == {"rf202612a": public_txt_from_pem(rsa_pem()),
                             "rf202612a-ed": public_txt_from_pem(ed25519_pem())}  # fmt: skip
    assert (found.key_bits, found.ed25519_selector) == (1024, "rf202612a-ed")


def test_generated_keys_have_the_asked_size_and_never_show_in_a_repr() -> None:
    pair = generate(2048, ed25519=False)
    assert pair.ed25519_pem is None and b"PRIVATE KEY" not in repr(pair).encode()
    found = public_keys(build_key_secret(DOMAIN, "s", pair), "s")
    assert found.key_bits == 2048 and list(found.records) == ["s"]


def test_string_data_is_read_and_problems_never_quote_the_key() -> None:
    assert public_keys({"stringData": {"private.pem": rsa_pem().decode()}}, "s").records["s"].startswith("v=DKIM1")
    with pytest.raises(ValueError, match=r"it has no private\.pem"):
        public_keys({"data": {}}, "s")
    broken = base64.b64encode(rsa_pem()[:200]).decode()
    with pytest.raises(ValueError, match=r"private\.pem: not a usable PEM private key") as caught:
        public_keys({"data": {"private.pem": broken}}, "s")
    assert "MII" not in str(caught.value)
