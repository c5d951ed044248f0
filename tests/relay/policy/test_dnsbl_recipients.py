"""DNSBL listings and recipient domains, answered by a real authoritative server (nsd) on loopback."""

from __future__ import annotations

import dns.asyncresolver
import pytest

from smtp_relay.config.fields import DnsSpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.policy.dnsbl import Listing, dnsbl_listings
from smtp_relay.policy.recipients import recipient_domain_exists
from tests.peers.dns import DnsServer
from tests.relay.policy.zones import DNSBL_ZONE, MAIL_ZONE

pytestmark = pytest.mark.peers


@pytest.fixture
def server(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory({**DNSBL_ZONE, **MAIL_ZONE})  # type: ignore[no-any-return]


@pytest.fixture
def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    return make_resolver(DnsSpec(nameservers=[server.nameserver()]))


async def test_listed_in_every_zone_with_the_txt_reason(resolver: dns.asyncresolver.Resolver) -> None:
    listings = await dnsbl_listings(resolver, "127.0.0.2", ["bl.test", "other-bl.test", "missing-bl.test"])
    assert listings == [
        Listing("bl.test", "127.0.0.2", "127.0.0.2 is listed, see https://bl.test/lookup?127.0.0.2"),
        Listing("other-bl.test", "127.0.0.5", "also here"),
    ]


async def test_listed_without_a_txt_record(resolver: dns.asyncresolver.Resolver) -> None:
    assert await dnsbl_listings(resolver, "127.0.0.3", ["bl.test"]) == [Listing("bl.test", "127.0.0.3", "")]


async def test_an_ipv6_client_is_looked_up_by_nibbles(resolver: dns.asyncresolver.Resolver) -> None:
    assert await dnsbl_listings(resolver, "2001:db8::1", ["bl.test"]) == [Listing("bl.test", "127.0.0.4", "")]


@pytest.mark.parametrize(
    "client",
    [
        "127.0.0.1",  # NXDOMAIN
        "127.0.0.9",  # an answer outside 127/8 (a wildcarding or typo'd zone)
        "127.0.0.10",  # 127.255.255.254: the list refuses our resolver, which is no listing
        "2001:db8::2",
    ],
)
async def test_not_listed(resolver: dns.asyncresolver.Resolver, client: str) -> None:
    assert await dnsbl_listings(resolver, client, ["bl.test"]) == []


async def test_a_dead_blocklist_is_not_a_listing(server: DnsServer, resolver: dns.asyncresolver.Resolver) -> None:
    server.stop()
    resolver.lifetime = 0.3
    assert await dnsbl_listings(resolver, "127.0.0.2", ["bl.test"]) == []


@pytest.mark.parametrize(
    ("domain", "exists"),
    [
        ("mail.test", True),  # MX
        ("aonly.mail.test", True),  # no MX, an A record: the implicit MX
        ("v6only.mail.test", True),  # no MX, only AAAA
        ("MAIL.TEST.", True),
        ("nowhere.mail.test", False),  # NXDOMAIN
        ("noaddress.mail.test", False),  # the name exists, but neither MX nor address
        ("nullmx.mail.test", False),  # RFC 7505: the domain says it takes no mail
        ("[192.0.2.1]", True),
    ],
)
async def test_recipient_domain_exists(resolver: dns.asyncresolver.Resolver, domain: str, exists: bool) -> None:
    assert await recipient_domain_exists(resolver, domain) is exists


async def test_recipient_domain_unknown_when_dns_is_down(
    server: DnsServer, resolver: dns.asyncresolver.Resolver
) -> None:
    server.stop()
    resolver.lifetime = 0.3
    assert await recipient_domain_exists(resolver, "mail.test") is None
