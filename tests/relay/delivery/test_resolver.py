"""The resolver against a real authoritative server (NSD): MX order, implicit and null MX, error classes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bench.peers.ports import closed_port

from smtp_relay.config.fields import DnsSpec
from smtp_relay.delivery.resolver import (
    NullMxError,
    PermanentDnsError,
    TemporaryDnsError,
    lookup_mx,
    make_resolver,
    parse_nameserver,
    resolve_host,
)
from tests.peers.dns import DnsServer, ZoneSpec

ZONES = {
    "example.test": [
        "@ MX 20 mx-b",
        "@ MX 10 mx-a.example.test.",
        "@ MX 30 mx.elsewhere.test.",
        "mx-a A 127.0.0.10",
        "mx-b A 127.0.0.11",
        "implicit A 127.0.0.12",
        "v6only AAAA ::1",
        "nullmx MX 0 .",
        'txtonly TXT "no mail here"',
        f'spf TXT "v=spf1 {" ".join(f"ip4:127.0.{i}.0/24" for i in range(30))} -all"',
    ],
}


@pytest.fixture
def dns_server(dns_server_factory: Callable[[ZoneSpec], DnsServer]) -> DnsServer:
    return dns_server_factory(ZONES)


async def test_mx_in_preference_order_through_the_port(dns_server: DnsServer) -> None:
    resolver = make_resolver(DnsSpec(nameservers=[dns_server.nameserver()]))
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [("127.0.0.1", dns_server.port)]  # type: ignore[union-attr]
    assert await lookup_mx(resolver, "Example.Test") == ["mx-a.example.test", "mx-b.example.test", "mx.elsewhere.test"]
    assert await resolve_host(resolver, "mx-b.example.test", search=False) == ["127.0.0.11"]


async def test_implicit_mx_null_mx_and_nxdomain(dns_server: DnsServer) -> None:
    resolver = make_resolver(DnsSpec(nameservers=[dns_server.nameserver()]))
    assert await lookup_mx(resolver, "implicit.example.test") == ["implicit.example.test"]
    assert await lookup_mx(resolver, "v6only.example.test") == ["v6only.example.test"]
    with pytest.raises(NullMxError):
        await lookup_mx(resolver, "nullmx.example.test")
    with pytest.raises(PermanentDnsError, match="NXDOMAIN"):
        await lookup_mx(resolver, "nope.example.test")
    with pytest.raises(PermanentDnsError, match="no address"):
        await lookup_mx(resolver, "txtonly.example.test")  # neither MX nor A/AAAA
    with pytest.raises(PermanentDnsError):
        await resolve_host(resolver, "nope.example.test", search=False)


async def test_refused_and_unreachable_are_temporary(dns_server: DnsServer) -> None:
    resolver = make_resolver(DnsSpec(nameservers=[dns_server.nameserver()]))
    with pytest.raises(TemporaryDnsError):
        await lookup_mx(resolver, "not-served.test")  # NSD answers REFUSED outside its zones
    dead = make_resolver(DnsSpec(nameservers=[f"127.0.0.1:{closed_port()}"]))
    dead.lifetime = 1.0
    with pytest.raises(TemporaryDnsError):
        await lookup_mx(dead, "example.test")


async def test_long_txt_is_split_and_reassembled(dns_server: DnsServer) -> None:
    resolver = make_resolver(DnsSpec(nameservers=[dns_server.nameserver()]))
    answer = await resolver.resolve("spf.example.test", "TXT")
    strings = [s for rr in answer for s in rr.strings]
    assert len(strings) == 3 and all(len(s) <= 255 for s in strings)
    assert b"".join(strings) == f"v=spf1 {' '.join(f'ip4:127.0.{i}.0/24' for i in range(30))} -all".encode()


def test_nameserver_forms() -> None:
    assert (parse_nameserver("127.0.0.1").address, parse_nameserver("127.0.0.1").port) == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.2:5353").port == 5353
    assert (parse_nameserver("[::1]:5300").address, parse_nameserver("[::1]:5300").port) == ("::1", 5300)
    assert parse_nameserver("::1").port == 53
    with pytest.raises(ValueError):
        parse_nameserver("dns.example:53")
    system = make_resolver(DnsSpec())
    assert system.lifetime == 5.0 and system.nameservers  # from /etc/resolv.conf; not queried here
