"""Test peer fixtures: a throwaway certificate authority and server certificates for 127.0.0.1.

Real TLS (not a mocked context): the relay serves a certificate issued here, and clients (Python's ssl,
swaks --tls-verify) trust only this CA, so a test proves the chain and the names, not just "some TLS".
EC P-256 keys keep issuing fast (a few ms).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class IssuedCert:
    """A server certificate and its key, as PEM bytes and as files."""

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    cert_path: Path
    key_path: Path
    serial: int


@dataclass
class ThrowawayCA:
    """A CA made for one test session; `issue` signs server certificates for the given names."""

    folder: Path
    ca_pem: bytes = field(repr=False)
    ca_path: Path
    _key: ec.EllipticCurvePrivateKey = field(repr=False)
    _cert: x509.Certificate = field(repr=False)
    _issued: int = 0

    @classmethod
    def create(cls, folder: Path, common_name: str = "relayfleet test CA") -> ThrowawayCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        ca_pem = cert.public_bytes(_PEM)
        ca_path = folder / "ca.pem"
        ca_path.write_bytes(ca_pem)
        return cls(folder=folder, ca_pem=ca_pem, ca_path=ca_path, _key=key, _cert=cert)

    def issue(self, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")) -> IssuedCert:
        """A server certificate with each name as a DNS or IP subjectAltName."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._issued += 1
        cert_pem = cert.public_bytes(_PEM)
        key_pem = _key_pem(key)
        cert_path = self.folder / f"server{self._issued}.crt"
        key_path = self.folder / f"server{self._issued}.key"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        return IssuedCert(cert_pem=cert_pem, key_pem=key_pem, cert_path=cert_path, key_path=key_path, serial=serial)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    """One CA per test session."""
    return ThrowawayCA.create(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def server_cert(test_ca: ThrowawayCA) -> IssuedCert:
    """A server certificate for localhost and 127.0.0.1, signed by `test_ca`."""
    return test_ca.issue(("localhost", "127.0.0.1"))
