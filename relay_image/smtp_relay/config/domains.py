"""The sending domains a relay knows: which are verified for sending, and the DKIM keys it signs with.

This is the relay's runtime view, resolved from the SendingDomain documents of its manifest (rendered by the
operator with their status, or written by hand for local use) and the key Secrets they name. It is the
contract between the config loader, the policy (`senders.requireVerifiedDomain`) and the DKIM signer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

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
