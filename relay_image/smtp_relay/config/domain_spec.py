"""The `SendingDomain` spec: a domain the fleet sends for, its DKIM keys and the DNS records it needs.

Shared, like the SmtpRelay spec, by the operator (which keeps the keys and checks DNS), the relay (which
signs with the keys and enforces `senders.requireVerifiedDomain`) and `smtp-relay domains` (which runs the
operator's DNS checks locally). The CRD schema is generated from these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from smtp_relay.config.fields import (
    DNS_LABEL,
    MAX_NETWORKS,
    DnsSpec,
    DomainName,
    Duration,
    Network,
    SecretName,
    SpecModel,
)

MAX_RELAYS = 64
"""SmtpRelays one domain may name."""

DkimSelector = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]


class DkimSpec(SpecModel):
    """DKIM keys: generated and rotated by the operator, or brought by the team (secretName)."""

    selector: DkimSelector | None = None
    """DKIM selector of the first key; generated when empty. Required with secretName."""
    secret_name: SecretName | None = None
    """A Secret holding `private.pem` (RSA or Ed25519) already published under `selector`: the operator
    never generates or rotates this key and only verifies its record."""
    key_bits: Literal[1024, 2048, 3072, 4096] = 2048
    """RSA key size of generated keys."""
    ed25519: bool = False
    """Also generate an Ed25519 key (RFC 8463) and sign with it alongside RSA."""
    rotate_every: Duration = "180d"
    """Rotation period of generated keys."""

    @model_validator(mode="after")
    def _own_key_needs_selector(self) -> DkimSpec:
        if self.secret_name is not None and self.selector is None:
            raise PydanticCustomError("dkim", "secretName needs the selector its public key is published under")
        return self


class SpfSpec(SpecModel):
    """What the domain's SPF record must authorize."""

    include: Annotated[str, Field(max_length=253)] = ""
    """An include: domain that the SPF record must contain (the fleet's egress record)."""
    egress_ips: Annotated[list[Network], Field(max_length=MAX_NETWORKS)] = []
    """The relays' egress IPs the SPF record must allow."""


class DmarcSpec(SpecModel):
    """DMARC expectations."""

    required: bool = False
    """Advisory unless true: a missing DMARC record then keeps the domain unverified."""
    policy: Literal["none", "quarantine", "reject"] = "none"
    """The p= of the record the status recommends publishing."""
    report_to: Annotated[str, Field(max_length=253)] = ""
    """A mailbox for aggregate reports (rua=mailto:...) in the recommended record; empty for none."""


class ReturnPathSpec(SpecModel):
    """A custom return-path (MAIL FROM) domain: its MX receives the bounces, its SPF authorizes the fleet."""

    domain: DomainName
    """The return-path domain, a subdomain of the sending domain (e.g. bounces.example.com)."""
    mx: DomainName
    """The host that receives bounces for it: the MX record it must publish."""


class SendingDomainSpec(SpecModel):
    """A domain the fleet sends for."""

    domain: DomainName
    """The domain name."""
    relays: Annotated[list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]], Field(max_length=MAX_RELAYS)] = []
    """SmtpRelays (same namespace) that send for this domain."""
    dkim: DkimSpec = DkimSpec()
    """DKIM keys."""
    spf: SpfSpec = SpfSpec()
    """SPF expectations."""
    dmarc: DmarcSpec = DmarcSpec()
    """DMARC expectations."""
    return_path: ReturnPathSpec | None = None
    """A custom return-path domain, checked for its MX and SPF records."""
    dns: DnsSpec = DnsSpec()
    """The resolver for this domain's checks; empty uses the operator's (RELAYFLEET_DNS_NAMESERVERS)."""

    @model_validator(mode="after")
    def _return_path_below_domain(self) -> SendingDomainSpec:
        if self.return_path is not None and not self.return_path.domain.endswith("." + self.domain):
            raise PydanticCustomError("returnPath", "returnPath.domain must be a subdomain of {d}", {"d": self.domain})
        return self
