"""DNS blocklists (RFC 5782): is the client IP listed in one of `policy.ipAuthority.dnsbl.zones`?

A listing is an A record of 127.0.0.0/8 under the zone for the reversed address; its TXT record says why.
Blocklists are advisory infrastructure, so anything short of a clear listing (NXDOMAIN, timeouts, answers
outside 127/8, the 127.255.255.0/24 error codes Spamhaus sends to refused resolvers) counts as not listed:
a DNSBL outage must never stop the relay's mail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver

from smtp_relay.policy.util import reply_text
from smtp_relay.policy.verdict import Action, Verdict, reject

log = logging.getLogger(__name__)

_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class Listing:
    """One zone that lists the client: the return code (e.g. 127.0.0.2) and the zone's reason text."""

    zone: str
    code: str
    text: str


def query_name(client_ip: str, zone: str) -> str | None:
    """The name to look up: reversed octets (IPv4) or reversed nibbles (IPv6) under the zone (RFC 5782 2.1, 2.4).

    IPv4-mapped IPv6 addresses are looked up as IPv4; anything that is not an address gives None.
    """
    try:
        addr = ipaddress.ip_address(client_ip.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        labels = reversed(str(addr).split("."))
    else:
        labels = reversed(addr.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.rstrip(".").lower() + "."


def _is_listing(code: str) -> bool:
    try:
        addr = ipaddress.ip_address(code)
    except ValueError:
        return False
    return addr in _LOOPBACK_V4 and addr not in _ERROR_CODES


async def _lookup_zone(resolver: dns.asyncresolver.Resolver, client_ip: str, zone: str) -> Listing | None:
    name = query_name(client_ip, zone)
    if name is None:
        return None
    try:
        answer = await resolver.resolve(name, "A", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        log.warning("DNSBL %s: lookup of %s failed, treating as not listed: %s", zone, client_ip, exc)
        return None
    codes = sorted(str(rr.address) for rr in answer)
    listed = [c for c in codes if _is_listing(c)]
    if not listed:
        log.warning("DNSBL %s answered %s for %s: not a listing code, ignored", zone, ",".join(codes), client_ip)
        return None
    text = ""
    try:
        txt = await resolver.resolve(name, "TXT", search=False)
        text = " ".join(b"".join(rr.strings).decode("utf-8", "replace") for rr in txt)
    except dns.exception.DNSException:
        pass  # the reason is optional: the A record alone is the listing
    return Listing(zone.rstrip(".").lower(), listed[0], text)


async def dnsbl_listings(resolver: dns.asyncresolver.Resolver, client_ip: str, zones: Sequence[str]) -> list[Listing]:
    """Every zone listing the client, in the order of `zones`; all zones are asked at once."""
    results = await asyncio.gather(*(_lookup_zone(resolver, client_ip, zone) for zone in zones))
    return [r for r in results if r is not None]


def dnsbl_verdict(listings: Sequence[Listing], action: Literal["tag", "reject"]) -> Verdict | None:
    """The first listing decides: 554 5.7.1 naming the zone and its reason, or a TAG carrying the same text."""
    if not listings:
        return None
    first = listings[0]
    reason = reply_text(first.text, 200) or f"returned {first.code}"
    text = f"Client host rejected: listed in {first.zone}: {reason}"
    if action == "reject":
        return reject(554, "5.7.1", text, "dnsbl")
    return Verdict(Action.TAG, 250, "2.7.1", f"listed in {first.zone}: {reason}", "dnsbl")
