"""Checks when a client connects: is it on a DNS blocklist, does it hold too many connections?

Both run before the greeting, so a refused client costs one TCP connection and one reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtp_relay.config.spec import DnsblSpec
from smtp_relay.policy.dnsbl import dnsbl_verdict
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.ratelimit import ConnectionLimiter
from smtp_relay.policy.util import NetworkList, ip_in
from smtp_relay.policy.verdict import SKIP, Check, Facts, Outcome, Verdict


def dnsbl(spec: DnsblSpec, lookups: Lookups) -> Check:
    """554 5.7.1 (or a TAG, `action: tag`) for a client listed in one of the zones; cached per client."""
    zones: Sequence[str] = tuple(spec.zones)
    action = spec.action

    async def look_up(client_ip: str) -> Verdict | None:
        return dnsbl_verdict(await lookups.dnsbl(client_ip, zones), action)

    def check_dnsbl(facts: Facts) -> Outcome:
        listings = lookups.listings.get(facts.client_ip)
        if listings is not None:
            return dnsbl_verdict(listings, action)
        return look_up(facts.client_ip)

    return Check("dnsbl", "connect", check_dnsbl, waits=True)


def connection_limit(connections: ConnectionLimiter, trusted: NetworkList) -> Check:
    """421 4.7.0 for a client holding too many connections; not for allowedNetworks (our own clients).

    Counts nothing: the engine counts the connection once the whole stage has accepted it.
    """

    def check_connection_limit(facts: Facts) -> Verdict | None:
        if ip_in(facts.client_ip, trusted):
            return SKIP
        return connections.refusal(facts.client_ip)

    return Check("connection_limit", "connect", check_connection_limit)
