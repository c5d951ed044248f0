"""The DNS records a SendingDomain must publish, computed from its spec and its DKIM public keys.

This is what status.records[].expected shows and what `smtp-relay domains` prints: the exact text to
paste into a zone. The SPF text is a recommendation only; the check evaluates whatever SPF record the
domain publishes, as a receiver would (`observe.py`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.fields import DnsSpec

Purpose = Literal["dkim", "spf", "dmarc", "returnPath"]
RecordType = Literal["TXT", "MX"]

MX_PREFERENCE = 10
"""The preference of the recommended return-path MX (any value works: it is the only MX)."""


@dataclass(frozen=True)
class ExpectedRecord:
    """One record to publish: where, which type, and its recommended value."""

    purpose: Purpose
    type: RecordType
    name: str
    """The owner name, without the trailing dot."""
    expected: str
    """The value to publish; empty for a DKIM selector whose key is not known here (checked, not compared)."""
    required: bool
    """Whether the domain is verified only with this record in place (DMARC is advisory unless required)."""


def dkim_name(selector: str, domain: str) -> str:
    return f"{selector.lower()}._domainkey.{domain}"


def dmarc_name(domain: str) -> str:
    return f"_dmarc.{domain}"


def spf_record(spec: SendingDomainSpec) -> str:
    """The recommended SPF record: the egress addresses, then the fleet's include, then `-all`."""
    terms = ["v=spf1"]
    for item in spec.spf.egress_ips:
        network = ipaddress.ip_network(item, strict=False)
        kind = "ip4" if network.version == 4 else "ip6"
        single = network.prefixlen == network.max_prefixlen
        terms.append(f"{kind}:{network.network_address if single else network}")
    if spec.spf.include:
        terms.append(f"include:{spec.spf.include.rstrip('.').lower()}")
    terms.append("-all")
    return " ".join(terms)


def dmarc_record(spec: SendingDomainSpec) -> str:
    """The recommended DMARC record: the spec's policy, and aggregate reports where a mailbox is given."""
    text = f"v=DMARC1; p={spec.dmarc.policy}"
    if spec.dmarc.report_to:
        address = spec.dmarc.report_to.removeprefix("mailto:")
        text += f"; rua=mailto:{address}"
    return text


def expected_records(spec: SendingDomainSpec, dkim: Mapping[str, str]) -> list[ExpectedRecord]:
    """Every record `spec` needs; `dkim` maps each selector to its public-key TXT value.

    The spec's own selector is listed even without its key (brought by a team, not readable here): its
    record is then looked at but cannot be compared.
    """
    domain = spec.domain.rstrip(".").lower()
    records = [
        ExpectedRecord("dkim", "TXT", dkim_name(selector, domain), value, True) for selector, value in dkim.items()
    ]
    selector = spec.dkim.selector
    if selector is not None and selector.lower() not in {s.lower() for s in dkim}:
        records.insert(0, ExpectedRecord("dkim", "TXT", dkim_name(selector, domain), "", True))
    spf = spf_record(spec)
    records.append(ExpectedRecord("spf", "TXT", domain, spf, True))
    records.append(ExpectedRecord("dmarc", "TXT", dmarc_name(domain), dmarc_record(spec), spec.dmarc.required))
    if spec.return_path is not None:
        bounce = spec.return_path.domain.rstrip(".").lower()
        mx = spec.return_path.mx.rstrip(".").lower()
        records.append(ExpectedRecord("returnPath", "MX", bounce, f"{MX_PREFERENCE} {mx}", True))
        records.append(ExpectedRecord("returnPath", "TXT", bounce, spf, True))
    return records


def effective_dns(spec: SendingDomainSpec, fallback: Sequence[str] = ()) -> DnsSpec:
    """The resolver for a domain's checks: its own `dns.nameservers`, else `fallback` (the operator's
    RELAYFLEET_DNS_NAMESERVERS or `--nameserver`), else the system resolver."""
    if spec.dns.nameservers:
        return spec.dns
    return DnsSpec(nameservers=list(fallback))
