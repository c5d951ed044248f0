"""The relay's one DNS resolver, and MX / address lookups with SMTP's error semantics.

Every lookup (MX, smarthost addresses, SPF, DKIM, DNSBL) goes through the object made here, so
`spec.dns.nameservers` is honoured everywhere (tests point it at a local authoritative server) and no
code path silently falls back to getaddrinfo. Lookup failures are split into permanent ones (the
recipient bounces) and temporary ones (the message is retried), as RFC 5321 delivery needs.
"""

from __future__ import annotations

import ipaddress
import random
import socket

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from smtp_relay.config.fields import DnsSpec, split_nameserver

LIFETIME = 5.0
"""Total seconds for one lookup, all retries and nameservers included: a slow DNS must defer, not hang."""
TIMEOUT = 2.0
"""Seconds to wait for one nameserver before trying the next."""


class DnsError(Exception):
    """A lookup that gave no usable answer."""


class PermanentDnsError(DnsError):
    """The answer is authoritative and final (NXDOMAIN, null MX, no address): bounce."""


class NullMxError(PermanentDnsError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail at all (reply code 556)."""


class TemporaryDnsError(DnsError):
    """Timeout, SERVFAIL or REFUSED: the answer may come later, so retry."""


def parse_nameserver(item: str) -> dns.nameserver.Do53Nameserver:
    """`127.0.0.1`, `127.0.0.1:5353`, `::1` or `[::1]:5353` into a nameserver with its own port."""
    host, port = split_nameserver(item)
    return dns.nameserver.Do53Nameserver(host, port)


def make_resolver(dns_spec: DnsSpec) -> dns.asyncresolver.Resolver:
    """The resolver for `spec.dns`: the listed nameservers (each with its port), or /etc/resolv.conf.

    Short timeouts keep a dead nameserver from stalling delivery or the SMTP dialogue; a TTL-honouring
    cache spares repeated MX/DNSBL lookups of the same names.
    """
    if dns_spec.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [parse_nameserver(item) for item in dns_spec.nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = LIFETIME
    resolver.timeout = TIMEOUT
    resolver.cache = dns.resolver.LRUCache(10000)
    return resolver


def _host(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


async def lookup_mx(resolver: dns.asyncresolver.Resolver, domain: str) -> list[str]:
    """The hosts to try for `domain`, best preference first (equal preferences shuffled, RFC 5321 5.1).

    No MX but an address record gives the implicit MX (the domain itself). A null MX (RFC 7505),
    NXDOMAIN, or neither MX nor address is permanent; timeouts and server failures are temporary.
    """
    domain = domain.rstrip(".").lower()
    try:
        answer = await resolver.resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        raise PermanentDnsError(f"{domain}: no such domain (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        await resolve_host(resolver, domain, search=False)  # raises PermanentDnsError when it has no address
        return [domain]
    except dns.exception.DNSException as exc:
        raise TemporaryDnsError(f"{domain}: MX lookup failed: {exc}") from None
    records = [rr for rr in answer if isinstance(rr, MX)]
    real = [rr for rr in records if rr.exchange != dns.name.root]
    if not real:
        raise NullMxError(f"{domain}: domain does not accept mail (null MX, RFC 7505)")
    by_preference: dict[int, list[str]] = {}
    for rr in real:
        by_preference.setdefault(rr.preference, []).append(_host(rr.exchange))
    hosts: list[str] = []
    for preference in sorted(by_preference):
        same = by_preference[preference]
        random.shuffle(same)
        hosts.extend(h for h in same if h not in hosts)
    return hosts


async def resolve_host(resolver: dns.asyncresolver.Resolver, host: str, *, search: bool = True) -> list[str]:
    """IPv4 then IPv6 addresses of `host` through the relay's resolver (an IP literal is returned as is).

    `search` applies resolv.conf search domains, so short Kubernetes Service names work for smarthosts;
    MX targets are absolute names and pass `search=False`.
    """
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    if host.lower() in ("localhost", "localhost."):
        return ["127.0.0.1"]  # dnspython does not read /etc/hosts; localhost must still work
    try:
        answers = await resolver.resolve_name(host, family=socket.AF_UNSPEC, search=search)
    except dns.resolver.NXDOMAIN:
        raise PermanentDnsError(f"{host}: no such host (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        raise PermanentDnsError(f"{host}: no address record") from None
    except dns.exception.DNSException as exc:
        raise TemporaryDnsError(f"{host}: address lookup failed: {exc}") from None
    addresses = list(answers.addresses())
    if not addresses:
        raise PermanentDnsError(f"{host}: no address record")
    return sorted(addresses, key=lambda a: ":" in a)  # IPv4 first: loopback tests and most MXes
