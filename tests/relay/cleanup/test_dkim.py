"""The DKIM signer's pieces: which headers h= lists, the header From domain, the body canonicalization
against dkimpy's, the folding of the field, and the keys it refuses. The relay-level tests with OpenDKIM
as the verifier are in tests/relay/smtp/test_dkim_signing.py."""

from __future__ import annotations

import re
import subprocess

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from smtp_relay.cleanup.dkim import sign
from smtp_relay.cleanup.dkim_keys import DkimKeyError, SigningKey, load_domain_keys, load_key
from smtp_relay.cleanup.dkim_message import (
    UnsignableError,
    header_from_domain,
    header_list,
    our_signatures,
    relaxed_body,
    split_message,
)
from smtp_relay.config.domains import DkimKey, SendingDomainConfig, SendingDomains
from tests.peers.opendkim import dkim_record, private_pem

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
NOW = 1_796_000_000.0


def _headers(text: str) -> list[list[bytes]]:
    return split_message(text.replace("\n", "\r\n").encode())[0]


def _key(domain: str = "example.test", selector: str = "s1", key: rsa.RSAPrivateKey | None = None) -> SigningKey:
    return load_key(domain, DkimKey(selector, "rsa-sha256", private_pem(key or RSA)))


def _dkimpy_verifies(message: bytes, records: dict[str, str]) -> bool:
    """dkimpy's verdict on the first signature, the keys given per DNS name instead of looked up."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        record = records.get(name.decode().rstrip("."))
        return record.encode() if record is not None else None

    return bool(dkim.verify(message, dnsfunc=lookup))


# --- h= ------------------------------------------------------------------------------------------


def test_from_is_oversigned_and_present_display_fields_once_more_than_they_occur() -> None:
    headers = _headers(
        "Received: from a\nReceived: from b\nFrom: a@example.test\nTo: b@example.org\nTo: c@example.org\n"
        "Subject: hi\nList-Id: <list.example.test>\nX-Custom: 1\n\nbody\n"
    )
    names = header_list(headers)
    assert names.count(b"from") == 2
    assert names.count(b"to") == 3
    assert names.count(b"subject") == 2
    assert names.count(b"list-id") == 1  # signed as it occurs, not over-signed
    # absent: not listed, so a hop adding a missing Date or Message-ID does not break the signature
    assert b"date" not in names and b"message-id" not in names and b"cc" not in names
    assert b"received" not in names and b"x-custom" not in names


def test_a_message_without_from_is_not_signed() -> None:
    with pytest.raises(UnsignableError) as missing:
        header_from_domain(_headers("Subject: no sender\n\nbody\n"))
    assert missing.value.reason == "no_from"


# --- header From -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        ("alice@Example.Test", "example.test"),
        ('"Alice, the first" <alice@mail.example.test>', "mail.example.test"),
        ("=?utf-8?q?Al=C3=AFce?= <alice@example.test>", "example.test"),
        ("Alice\n <alice@example.test>", "example.test"),  # folded
        ("<alice@example.test.>", "example.test"),
    ],
)
def test_header_from_domain(value: str, domain: str) -> None:
    assert header_from_domain(_headers(f"From: {value}\nSubject: x\n\nbody\n")) == domain


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ("From: a@example.test\nFrom: b@example.test\n", "multiple_from"),
        ("From: undisclosed\n", "no_from_domain"),
        ("From: <@example.test>\n", "no_from_domain"),
    ],
)
def test_header_from_refusals(head: str, reason: str) -> None:
    with pytest.raises(UnsignableError) as refused:
        header_from_domain(_headers(head + "Subject: x\n\nbody\n"))
    assert refused.value.reason == reason


def test_a_header_section_that_is_not_rfc5322_is_unsignable() -> None:
    with pytest.raises(UnsignableError) as refused:
        split_message(b"this is no header\r\n\r\nbody\r\n")
    assert refused.value.reason == "malformed_header"


def test_existing_signatures_are_read_and_a_broken_one_is_ignored() -> None:
    headers = _headers(
        "DKIM-Signature: v=1; a=rsa-sha256; d=Example.Test;\n s=S1; b=abc\n"
        "DKIM-Signature: this is not a tag list\nDKIM-Signature: v=1; d=other.test; s=x; b=def\n"
        "From: a@example.test\n\nbody\n"
    )
    assert our_signatures(headers) == {("example.test", "s1"), ("other.test", "x")}


# --- body canonicalization ---------------------------------------------------------------------------

_LINE = st.text(alphabet="ab \t", max_size=12).map(str.encode)


@given(lines=st.lists(_LINE, max_size=8), trailing=st.integers(0, 3), final_crlf=st.booleans())
def test_relaxed_body_equals_dkimpys(lines: list[bytes], trailing: int, final_crlf: bool) -> None:
    body = b"\r\n".join(lines) + (b"\r\n" if final_crlf else b"") + b"\r\n" * trailing
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize(
    "body", [b"", b"\r\n", b"\r\n\r\n", b"a\r\n\r\n\r\n", b"a  b\t\tc \t\r\n", b"x\r\r\n\r\n", b"x\n\r\n"]
)
def test_relaxed_body_edge_cases_equal_dkimpys(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


# --- the signature field ------------------------------------------------------------------------------


def test_signature_verifies_with_dkimpy_and_keeps_lines_within_78() -> None:
    head = "From: a@example.test\n" + "".join(f"To: r{i}@example.org\n" for i in range(12))
    message = (head + "Subject: hi\n\nbody  text \n\n").replace("\n", "\r\n").encode()
    fields = sign(message, [_key()], now=NOW)
    assert all(len(line) <= 78 for line in fields.split(b"\r\n"))
    assert re.search(rb"\st=1796000000;", fields) and re.search(rb"\sc=relaxed/relaxed;", fields)
    assert _dkimpy_verifies(fields + message, {"s1._domainkey.example.test": dkim_record(RSA)})


def test_a_long_domain_is_never_folded_inside_its_token() -> None:
    domain = ("a" * 60) + ".example.test"
    message = f"From: x@{domain}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    fields = sign(message, [_key(domain)], now=NOW)
    assert re.search(rb"\sd=" + re.escape(domain.encode()) + b";", fields)
    assert _dkimpy_verifies(fields + message, {f"s1._domainkey.{domain}": dkim_record(RSA)})


def test_a_message_signed_with_every_key_already_is_not_signed_again() -> None:
    message = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = sign(message, [_key()], now=NOW) + message
    with pytest.raises(UnsignableError) as again:
        sign(signed, [_key()], now=NOW)
    assert again.value.reason == "already_signed"
    # another selector of the same domain still signs
    assert sign(signed, [_key(selector="s2")], now=NOW).startswith(b"DKIM-Signature:")


# --- keys ------------------------------------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, plain)


def _small_rsa_pem() -> bytes:
    """A 768-bit RSA key (cryptography will not make one; OpenSSL still does)."""
    return subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (DkimKey("s1", "rsa-sha256", _pem(ED)), "rsa-sha256 needs an RSA key, got Ed25519 key"),
        (DkimKey("s1", "ed25519-sha256", _pem(RSA)), "ed25519-sha256 needs an Ed25519 key, got RSA key"),
        (DkimKey("s1", "rsa-sha256", _pem(ec.generate_private_key(ec.SECP256R1()))), "needs an RSA key"),
        (DkimKey("s1", "rsa-sha256", b"-----BEGIN PRIVATE KEY-----\nnot base64\n"), "not a usable unencrypted PEM"),
        (
            DkimKey(
                "s1",
                "rsa-sha256",
                RSA.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                ),
            ),
            "not a usable unencrypted PEM",
        ),
        (DkimKey("bad_selector", "rsa-sha256", _pem(RSA)), "not a valid DKIM selector"),
        (DkimKey("s1", "rsa-sha256", b""), "not a usable unencrypted PEM"),
    ],
)
def test_unusable_keys_are_refused_naming_domain_and_selector(key: DkimKey, message: str) -> None:
    with pytest.raises(DkimKeyError) as refused:
        load_key("example.test", key)
    text = str(refused.value)
    assert f"SendingDomain example.test selector {key.selector!r}" in text
    assert message in text
    assert "PRIVATE KEY" not in text  # never the key material


def test_rsa_keys_below_1024_bits_are_refused() -> None:
    with pytest.raises(DkimKeyError, match="RSA key has 768 bits, at least 1024"):
        load_key("example.test", DkimKey("s1", "rsa-sha256", _small_rsa_pem()))


def test_keys_load_once_per_domain_and_a_duplicate_selector_is_refused() -> None:
    rsa_key = DkimKey("s1", "rsa-sha256", _pem(RSA))
    ed_key = DkimKey("s1", "ed25519-sha256", _pem(ED))  # same selector, other algorithm: allowed
    domains = SendingDomains(
        {
            "example.test": SendingDomainConfig("example.test", True, (rsa_key, ed_key)),
            "nokeys.test": SendingDomainConfig("nokeys.test", True),
        }
    )
    loaded = load_domain_keys(domains)
    assert list(loaded) == ["example.test"]
    assert [k.algorithm for k in loaded["example.test"]] == ["rsa-sha256", "ed25519-sha256"]
    twice = SendingDomains({"example.test": SendingDomainConfig("example.test", True, (rsa_key, rsa_key))})
    with pytest.raises(DkimKeyError, match="the same selector and algorithm appear twice"):
        load_domain_keys(twice)


def test_an_internationalized_domain_signs_as_a_labels() -> None:
    assert _key("bücher.example").domain == "xn--bcher-kva.example"
