"""The relay's view of its SendingDomains, resolved from their documents and key Secrets (config/domains.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtp_relay.config.domains import resolve_domains
from smtp_relay.config.manifest import ManifestError, SecretData, parse_domain


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


RSA_PEM = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
ED_PEM = _pem(ed25519.Ed25519PrivateKey.generate())


def doc(status: dict[str, object] | None = None, **dkim: object) -> dict[str, object]:
    body: dict[str, object] = {"kind": "SendingDomain", "metadata": {"name": "ex"},
                               "spec": {"domain": "Example.Test", "dkim": dkim}}  # fmt: skip
    if status is not None:
        body["status"] = status
    return body


def test_an_operator_rendered_domain_signs_with_its_active_keys() -> None:
    status = {
        "verifiedForSending": True,
        "dkim": {"activeSelector": "rf202612a", "secretName": "ex-dkim-rf202612a", "ed25519Selector": "rf202612a-ed"},
    }
    secrets = {"ex-dkim-rf202612a": SecretData("ex-dkim-rf202612a", {"private.pem": RSA_PEM, "ed25519.pem": ED_PEM})}
    found = resolve_domains([parse_domain(doc(status))], secrets).for_address_domain("news.example.test")
    assert found is not None and found.domain == "example.test" and found.verified
    assert [(k.selector, k.algorithm) for k in found.keys] == [
        ("rf202612a", "rsa-sha256"),
        ("rf202612a-ed", "ed25519-sha256"),
    ]


def test_an_unverified_domain_says_what_is_missing_and_signs_nothing_without_a_key() -> None:
    records = [
        {"purpose": "dkim", "status": "Pending"},
        {"purpose": "spf", "status": "Success"},
        {"purpose": "dmarc", "status": "Failed", "required": False},
        {"purpose": "dkim", "status": "Failed"},
    ]
    status = {"verifiedForSending": False, "records": records}
    (found,) = resolve_domains([parse_domain(doc(status))], {}).by_domain.values()
    assert (found.verified, found.missing, found.keys) == (False, ("dkim",), ())


def test_a_hand_written_domain_is_verified_and_uses_its_brought_key() -> None:
    secrets = {"own": SecretData("own", {"private.pem": ED_PEM})}
    (found,) = resolve_domains([parse_domain(doc(selector="corp", secretName="own"))], secrets).by_domain.values()
    assert found.verified and [(k.selector, k.algorithm) for k in found.keys] == [("corp", "ed25519-sha256")]


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({}, "SendingDomain ex: spec.dkim.secretName: Secret 'own' with key private.pem not found"),
        (
            {"own": SecretData("own", {"private.pem": b"junk"})},
            "spec.dkim.secretName (private.pem): not a PEM private key",
        ),
    ],
)
def test_a_missing_or_bad_key_names_the_field(secrets: dict[str, SecretData], message: str) -> None:
    with pytest.raises(ManifestError) as refused:
        resolve_domains([parse_domain(doc(selector="corp", secretName="own"))], secrets)
    assert message in str(refused.value)
