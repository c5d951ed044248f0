"""Observing a SendingDomain's records in DNS and checking each, concurrently, through one resolver.

Every lookup goes through the resolver `smtp_relay.delivery.resolver.make_resolver` builds for the
domain's DnsSpec, as the relay's own lookups do, so tests and teams point the checks at their DNS
server and nothing falls back to another resolver. A fresh resolver per check keeps its cache to one
pass: a record a team has just fixed is seen at the next check, not after its TTL.
SPF is evaluated by `smtp_relay.policy.spf.check_spf` (pyspf's check_host) for every egress address,
exactly as a receiver would.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping

import dns.asyncresolver
import dns.exception
import dns.resolver

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.fields import DnsSpec
from smtp_relay.delivery.resolver import LIFETIME, make_resolver
from smtp_relay.dnscheck.records import ExpectedRecord, expected_records
from smtp_relay.dnscheck.spf_walk import walk_include
from smtp_relay.dnscheck.verify import (
    Observation,
    RecordCheck,
    SpfEvaluation,
    check_dkim,
    check_dmarc,
    check_mx,
    check_spf,
    dkim_not_started,
)
from smtp_relay.policy.spf import QUERY_TIME
from smtp_relay.policy.spf import check_spf as spf_check_host


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, lookup_time: float) -> Observation:
    """TXT (each record's character-strings joined, RFC 7208 3.3 / RFC 6376 3.6.2.2) or MX
    (`<preference> <host>`) at `name`, with NXDOMAIN, NODATA and no answer told apart."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False, lifetime=lookup_time)
    except dns.resolver.NXDOMAIN:
        return Observation("noHost")
    except dns.resolver.NoAnswer:
        return Observation("noType")
    except dns.resolver.LifetimeTimeout:
        return Observation("serverError", error=f"no answer within {lookup_time:g} s")
    except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every nameserver
        return Observation("serverError", error=_no_nameservers(exc))
    except (dns.exception.DNSException, OSError) as exc:
        return Observation("serverError", error=str(exc) or type(exc).__name__)
    values: list[str] = []
    for rdata in answer:
        if rdtype == "TXT":
            values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        else:
            values.append(f"{rdata.preference} {rdata.exchange.to_text(omit_final_dot=True).lower()}")
    return Observation("found", tuple(values))


def _no_nameservers(exc: dns.resolver.NoNameservers) -> str:
    """`SERVFAIL from 127.0.0.1:5353` rather than dnspython's whole sentence with the query in it."""
    errors = exc.kwargs.get("errors") or []
    reasons = sorted({f"{error[3]} from {_server(str(error[0]), error[2])}" for error in errors if len(error) >= 4})
    return "; ".join(reasons) if reasons else "no nameserver answered"


def _server(text: str, port: object) -> str:
    """dnspython's `Do53:127.0.0.1@5353` as the `host:port` form of spec.dns.nameservers."""
    host = text.removeprefix("Do53:").partition("@")[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def egress_addresses(spec: SendingDomainSpec) -> list[str]:
    """One address per egress network to evaluate SPF with: the network's first address (a /32 or /128
    is the address itself)."""
    return [str(ipaddress.ip_network(item, strict=False).network_address) for item in spec.spf.egress_ips]


async def evaluate_spf(
    resolver: dns.asyncresolver.Resolver, domain: str, addresses: list[str], query_time: float = QUERY_TIME
) -> list[SpfEvaluation]:
    """check_host(<address>, <domain>, postmaster@<domain>) for each address, concurrently."""
    results = await asyncio.gather(
        *(spf_check_host(resolver, ip, f"postmaster@{domain}", domain, query_time=query_time) for ip in addresses)
    )
    return [SpfEvaluation(ip, r.result, r.explanation) for ip, r in zip(addresses, results, strict=True)]


async def _check_spf(
    resolver: dns.asyncresolver.Resolver, spec: SendingDomainSpec, record: ExpectedRecord, lookup_time: float
) -> RecordCheck:
    seen = await lookup(resolver, record.name, "TXT", lookup_time)
    blank = check_spf(record, seen, [])
    if blank.status != "Pending":  # not there, DNS down, two records: no evaluation changes that
        return blank
    addresses = egress_addresses(spec)
    if addresses:
        return check_spf(record, seen, await evaluate_spf(resolver, record.name, addresses))
    include = spec.spf.include
    if not include:
        return blank

    async def lookup_txt(name: str) -> Observation:
        return await lookup(resolver, name, "TXT", lookup_time)

    return check_spf(record, seen, [], include, await walk_include(lookup_txt, record.name, include))


async def _check_one(
    resolver: dns.asyncresolver.Resolver, spec: SendingDomainSpec, record: ExpectedRecord, lookup_time: float
) -> RecordCheck:
    if record.type == "MX":
        return check_mx(record, await lookup(resolver, record.name, "MX", lookup_time))
    if record.purpose == "dkim":
        return check_dkim(record, await lookup(resolver, record.name, "TXT", lookup_time))
    if record.purpose == "dmarc":
        return check_dmarc(record, await lookup(resolver, record.name, "TXT", lookup_time))
    return await _check_spf(resolver, spec, record, lookup_time)


async def check_domain(
    spec: SendingDomainSpec, dkim_keys: Mapping[str, str], dns_spec: DnsSpec, *, lookup_time: float = LIFETIME
) -> list[RecordCheck]:
    """Check every record `spec` needs, concurrently; `dkim_keys` maps selectors to their public-key
    TXT values (`dkim_keys.public_txt`). `lookup_time` bounds each lookup (all retries included)."""
    resolver = make_resolver(dns_spec)
    records = expected_records(spec, dkim_keys)
    checks = list(await asyncio.gather(*(_check_one(resolver, spec, record, lookup_time) for record in records)))
    if not any(record.purpose == "dkim" for record in records):
        checks.insert(0, dkim_not_started(spec.domain.rstrip(".").lower()))
    return checks
