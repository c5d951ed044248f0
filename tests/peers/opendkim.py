"""DKIM test material and OpenDKIM as the independent verifier (bench/peers/opendkim.py runs it).

`DkimWorld` is a signing domain as a receiver sees it: fresh RSA-2048 and Ed25519 keys, their
`<selector>._domainkey` TXT records served by a real nsd, and OpenDKIM asking that nsd for them.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.peers.opendkim import OpenDkimVerifier, opendkim_available
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtp_relay.config.domains import DkimKey, SendingDomainConfig, SendingDomains
from tests.peers.dns import DnsServer, ZoneSpec, txt_rdata

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def dkim_record(key: PrivateKey) -> str:
    """The `v=DKIM1` TXT value publishing `key`'s public half (RFC 6376 3.6.1, RFC 8463 4)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@dataclass
class DkimWorld:
    """One signing domain with an RSA and an Ed25519 key, published in a real DNS server."""

    domain: str
    rsa_key: rsa.RSAPrivateKey
    ed_key: ed25519.Ed25519PrivateKey
    dns: DnsServer
    verifier: OpenDkimVerifier

    RSA_SELECTOR = "rsa2026"
    ED_SELECTOR = "ed2026"

    def keys(self, *, rsa_key: bool = True, ed_key: bool = True) -> tuple[DkimKey, ...]:
        chosen = []
        if rsa_key:
            chosen.append(DkimKey(self.RSA_SELECTOR, "rsa-sha256", private_pem(self.rsa_key)))
        if ed_key:
            chosen.append(DkimKey(self.ED_SELECTOR, "ed25519-sha256", private_pem(self.ed_key)))
        return tuple(chosen)

    def sending_domains(self, *, verified: bool = True, **which: bool) -> SendingDomains:
        """This domain as the relay's config holds it."""
        return SendingDomains({self.domain: SendingDomainConfig(self.domain, verified, self.keys(**which))})


def world_zone(domain: str, rsa_key: PrivateKey, ed_key: PrivateKey) -> ZoneSpec:
    return {
        domain: [
            f"{DkimWorld.RSA_SELECTOR}._domainkey TXT {txt_rdata(dkim_record(rsa_key))}",
            f"{DkimWorld.ED_SELECTOR}._domainkey TXT {txt_rdata(dkim_record(ed_key))}",
        ]
    }


@pytest.fixture
def dkim_world(dns_server_factory: Callable[[ZoneSpec], DnsServer]) -> Iterator[DkimWorld]:
    """example.test with fresh keys in nsd, and OpenDKIM verifying against it; skips without opendkim."""
    if not opendkim_available():
        pytest.skip("opendkim is not installed (make peers installs it)")
    domain = "example.test"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    dns = dns_server_factory(world_zone(domain, rsa_key, ed_key))
    folder = Path(tempfile.mkdtemp(prefix="relayfleet-opendkim-"))
    try:
        yield DkimWorld(domain, rsa_key, ed_key, dns, OpenDkimVerifier(folder, [domain], (dns.host, dns.port)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
