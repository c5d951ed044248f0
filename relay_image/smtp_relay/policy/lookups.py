"""The DNS answers the checks share, each bounded in time and remembered briefly.

One place for the resolver and the caches: the DNSBL and SPF answers found at connect and MAIL are
needed again at end of DATA (tags, Authentication-Results, the builtin spam score), and a client
sending many messages is looked up once. Every lookup has an upper bound in time, so a slow DNS
server costs a bounded wait and never an unanswered client. The caches survive a config reload.

The caches are public for the checks' fast path: a check that finds its answer there gives it at
once instead of creating a coroutine to look it up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import dns.asyncresolver

from smtp_relay.policy.dnsbl import Listing, dnsbl_listings
from smtp_relay.policy.recipients import recipient_domain_exists
from smtp_relay.policy.spf import SpfResult, check_spf
from smtp_relay.policy.util import TtlCache

T = TypeVar("T")

DNS_TIMEOUT = 6.0
"""Upper bound for a DNSBL or recipient-domain lookup (the resolver's own lifetime is 5 s)."""
SPF_TIMEOUT = 10.0
"""Upper bound for one SPF evaluation, all its lookups included (a slow one is a temperror)."""


async def bounded(awaitable: Awaitable[T], seconds: float, fallback: T) -> T:
    """The awaitable's result, or `fallback` once `seconds` have passed."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        return fallback


class Lookups:
    """DNSBL listings per client, SPF results per identity, whether a domain receives mail."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        """Replaced on reload; the caches stay."""
        self.spf_results: TtlCache[tuple[str, str, str], SpfResult] = TtlCache(600, clock=clock)
        self.listings: TtlCache[str, tuple[Listing, ...]] = TtlCache(300, clock=clock)
        self.domains: TtlCache[str, bool] = TtlCache(300, clock=clock)

    # --- DNSBL -------------------------------------------------------------------------------------

    async def dnsbl(self, client_ip: str, zones: Sequence[str]) -> tuple[Listing, ...]:
        """Every zone of `zones` that lists the client (none when the lookups time out)."""
        cached = self.listings.get(client_ip)
        if cached is not None:
            return cached
        listings = tuple(await bounded(dnsbl_listings(self.resolver, client_ip, zones), DNS_TIMEOUT, []))
        self.listings.put(client_ip, listings)
        return listings

    # --- SPF ---------------------------------------------------------------------------------------

    def cached_spf(self, client_ip: str, mail_from: str, helo: str) -> SpfResult | None:
        return self.spf_results.get((client_ip, mail_from.lower(), helo.lower()))

    async def spf(self, client_ip: str, mail_from: str, helo: str) -> SpfResult:
        """SPF for this identity, from the cache when MAIL already evaluated it; a temperror is not kept."""
        key = (client_ip, mail_from.lower(), helo.lower())
        cached = self.spf_results.get(key)
        if cached is not None:
            return cached
        timeout = SpfResult("temperror", "SPF evaluation timed out", "mailfrom" if mail_from else "helo")
        result = await bounded(
            check_spf(self.resolver, client_ip, mail_from, helo, query_time=SPF_TIMEOUT), SPF_TIMEOUT + 2, timeout
        )
        if result.result != "temperror":
            self.spf_results.put(key, result)
        return result

    # --- recipient domains -------------------------------------------------------------------------

    async def domain_exists(self, domain: str) -> bool | None:
        """Can `domain` receive mail (None: DNS gave no answer in time; not remembered)."""
        exists = self.domains.get(domain)
        if exists is None:
            exists = await bounded(recipient_domain_exists(self.resolver, domain), DNS_TIMEOUT, None)
            if exists is not None:
                self.domains.put(domain, exists, ttl=300 if exists else 60)
        return exists
