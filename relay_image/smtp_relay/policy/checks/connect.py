"""Checks when a client connects: does it hold too many connections, is it on a DNS blocklist?

Both run before the greeting, so a refused client costs one TCP connection and one reply; the
connection limit even before a TLS handshake, so a flood of connections costs no cryptography.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtp_relay.config.policy_spec import DnsblSpec
from smtp_relay.config.spec import ClientsSpec
from smtp_relay.policy.dnsbl import dnsbl_verdict
from smtp_relay.policy.lookups import Lookups
from smtp_relay.policy.ratelimit import ConnectionLimiter
from smtp_relay.policy.util import NetworkList, ip_in
from smtp_relay.policy.verdict import Check, Facts, Outcome, Verdict


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


def connection_limit(connections: ConnectionLimiter, trusted: NetworkList, clients: ClientsSpec) -> Check:
    """421 4.7.0 for a client holding more connections than its limit (allowedNetworks have their own, larger one).

    Counts nothing: the listener counts every connection from accept to close (PolicyEngine.connection_opened).
    """
    per_client = clients.max_connections_per_client
    per_trusted_client = clients.max_connections_per_trusted_client

    def check_connection_limit(facts: Facts) -> Verdict | None:
        limit = per_trusted_client if ip_in(facts.client_ip, trusted) else per_client
        return connections.refusal(facts.client_ip, limit)

    return Check("connection_limit", "connect", check_connection_limit)
