"""DKIM key pairs: generation, loading, and the public-key record (RFC 6376 3.6.1, RFC 8463 4.2)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from smtp_relay.dnscheck.dkim_keys import (
    generate_ed25519,
    generate_rsa,
    key_type,
    load_private_key,
    new_selector,
    public_txt,
    public_txt_from_pem,
)
from tests.relay.dnscheck.keys import ed25519_pem, rsa_pem


def test_rsa_key_of_the_asked_size_in_pkcs8_pem() -> None:
    pem = generate_rsa(2048)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_private_key(pem)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_rsa_below_1024_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1024"):
        generate_rsa(512)


def test_rsa_record_carries_the_der_subject_public_key_info() -> None:
    key = load_private_key(rsa_pem())
    value = public_txt(key)
    assert value.startswith("v=DKIM1; k=rsa; p=")
    p = base64.b64decode(value.split("p=", 1)[1])
    loaded = serialization.load_der_public_key(p)  # SubjectPublicKeyInfo, as RFC 6376 3.6.1 asks
    assert isinstance(loaded, rsa.RSAPublicKey)
    assert loaded.public_numbers() == key.public_key().public_numbers()


def test_ed25519_record_carries_the_raw_32_bytes() -> None:
    pem = generate_ed25519()
    key = load_private_key(pem)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert key_type(key) == "ed25519"
    value = public_txt_from_pem(pem)
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(value.split("p=", 1)[1])
    assert len(raw) == 32
    assert raw == key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_pkcs1_rsa_pem_and_text_pem_load() -> None:
    key = load_private_key(rsa_pem())
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public_txt_from_pem(pkcs1.decode()) == public_txt(key)
    assert public_txt_from_pem(ed25519_pem().decode()) == public_txt_from_pem(ed25519_pem())


def test_other_key_types_and_garbage_are_clear_errors() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="must be RSA or Ed25519, not ECDSA"):
        load_private_key(ec_pem)
    with pytest.raises(ValueError, match="not a usable PEM private key"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    encrypted = load_private_key(ed25519_pem()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(ValueError, match="encrypted"):
        load_private_key(encrypted)


def test_selectors_name_the_month_and_skip_taken_ones() -> None:
    now = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)
    assert new_selector(now) == "rf202612a"
    assert new_selector(now, taken=["rf202612a", "RF202612B"]) == "rf202612c"
    assert new_selector(datetime(2027, 1, 1, tzinfo=UTC)) == "rf202701a"
    letters = [f"rf202612{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    assert new_selector(now, taken=letters) == "rf202612aa"
