"""The sending domains a relay knows: which are verified for sending, and the DKIM keys it signs with.

This is the relay's runtime view, resolved from the SendingDomain documents of its manifest (rendered by the
operator with their status, or written by hand for local use) and the key Secrets they name. It is the
contract between the config loader, the policy (`senders.requireVerifiedDomain`) and the DKIM signer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from smtp_relay.config.manifest import DomainDocument, ManifestError, SecretData

DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]


@dataclass(frozen=True)
class DkimKey:
    """One private key the relay signs with, under one selector."""

    selector: str
    algorithm: DkimAlgorithm
    private_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class SendingDomainConfig:
    """One SendingDomain as the relay uses it."""

    domain: str
    """The domain, lower case, without a trailing dot."""
    verified: bool
    """Verified for sending: its DNS records are published as the operator expects."""
    keys: tuple[DkimKey, ...] = ()
    """The active signing keys (RSA, and Ed25519 alongside it per RFC 8463); empty: no signature."""
    missing: tuple[str, ...] = ()
    """What keeps it unverified, as the operator saw it (`dkim`, `spf`, `dmarc`, `returnPath`), for the 550."""


@dataclass(frozen=True)
class SendingDomains:
    """Every SendingDomain the relay was given, by domain."""

    by_domain: Mapping[str, SendingDomainConfig] = field(default_factory=dict)

    def for_address_domain(self, domain: str) -> SendingDomainConfig | None:
        """The SendingDomain of `domain` or of its nearest parent domain (mail.example.com -> example.com)."""
        name = domain.lower().rstrip(".")
        while name:
            found = self.by_domain.get(name)
            if found is not None:
                return found
            _, _, name = name.partition(".")
        return None


KEY_FILE = "private.pem"
"""The private key of a DKIM Secret: the one a team brings (spec.dkim.secretName) or the operator generates."""
ED25519_KEY_FILE = "ed25519.pem"
"""The Ed25519 key beside the RSA one in a generated Secret (spec.dkim.ed25519), published at `<selector>-ed`."""


def _algorithm(pem: bytes, where: str) -> DkimAlgorithm:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ManifestError([f"{where}: not a PEM private key (RSA or Ed25519, unencrypted)"]) from None
    return "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


def _keys(doc: DomainDocument, secrets: Mapping[str, SecretData]) -> tuple[DkimKey, ...]:
    dkim: Mapping[str, Any] = (doc.status or {}).get("dkim") or {}
    selector, secret_name, field_path = dkim.get("activeSelector"), dkim.get("secretName"), "status.dkim.secretName"
    if not selector or not secret_name:  # a hand-written document, or no key active yet
        selector, secret_name, field_path = doc.spec.dkim.selector, doc.spec.dkim.secret_name, "spec.dkim.secretName"
    if not selector or not secret_name:
        return ()
    where = f"SendingDomain {doc.name}: {field_path}"
    # The operator copies each domain's keys into the relay's one Secret under per-domain file names.
    key_file = str(dkim.get("keyFile") or KEY_FILE)
    ed_file = str(dkim.get("ed25519KeyFile") or ED25519_KEY_FILE)
    secret = secrets.get(str(secret_name))
    if secret is None or key_file not in secret.data:
        raise ManifestError([f"{where}: Secret {secret_name!r} with key {key_file} not found"])
    pem = secret.data[key_file]
    keys = [DkimKey(str(selector), _algorithm(pem, f"{where} ({key_file})"), pem)]
    if ed_file in secret.data:
        ed_pem = secret.data[ed_file]
        ed_selector = str(dkim.get("ed25519Selector") or f"{selector}-ed")
        keys.append(DkimKey(ed_selector, _algorithm(ed_pem, f"{where} ({ed_file})"), ed_pem))
    return tuple(keys)


def _missing(status: Mapping[str, Any]) -> tuple[str, ...]:
    records = status.get("records") or []
    failing = [str(r.get("purpose")) for r in records if r.get("required", True) and r.get("status") != "Success"]
    return tuple(dict.fromkeys(failing))


def resolve_domains(docs: Sequence[DomainDocument], secrets: Mapping[str, SecretData]) -> SendingDomains:
    """The relay's view of its SendingDomains: verified as their status says (a document without status is
    hand-written for local use and counts as verified), with the keys of the active selector."""
    found: dict[str, SendingDomainConfig] = {}
    for doc in docs:
        domain = doc.spec.domain.lower().rstrip(".")
        status = doc.status
        verified = True if status is None else bool(status.get("verifiedForSending"))
        missing = () if status is None or verified else _missing(status)
        found[domain] = SendingDomainConfig(domain, verified, _keys(doc, secrets), missing)
    return SendingDomains(found)
