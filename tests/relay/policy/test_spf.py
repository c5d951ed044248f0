"""SPF through pyspf with every lookup answered by a real authoritative server (nsd) on loopback."""

from __future__ import annotations

import dns.asyncresolver
import pytest

from smtp_relay.config.fields import DnsSpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.policy.spf import check_spf, spf_verdict
from tests.peers.dns import DnsServer
from tests.relay.policy.zones import CLIENT, SPF_ZONE


async def test_a_helo_that_is_no_domain_gives_none_without_dns() -> None:
    resolver = make_resolver(DnsSpec(nameservers=["127.0.0.1:9"]))  # never asked
    result = await check_spf(resolver, CLIENT, "", "[127.0.0.1]")
    assert (result.result, result.identity) == ("none", "helo")


# --- against real DNS -----------------------------------------------------------------------------


@pytest.fixture
def spf_dns(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory(SPF_ZONE)  # type: ignore[no-any-return]


@pytest.fixture
def resolver(spf_dns: DnsServer) -> dns.asyncresolver.Resolver:
    return make_resolver(DnsSpec(nameservers=[spf_dns.nameserver()]))


@pytest.mark.peers
@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alice@pass.spf.test", "pass"),
        ("alice@fail.spf.test", "fail"),
        ("alice@softfail.spf.test", "softfail"),
        ("alice@neutral.spf.test", "neutral"),
        ("alice@none.spf.test", "none"),
        ("alice@missing.spf.test", "none"),
        ("alice@chain.spf.test", "pass"),
        ("alice@toomany.spf.test", "permerror"),
        ("alice@split.spf.test", "pass"),
        ("alice@long.spf.test", "pass"),
        ("alice@mx.spf.test", "pass"),
        ("alice@broken.spf.test", "permerror"),
    ],
)
async def test_spf_results(resolver: dns.asyncresolver.Resolver, sender: str, expected: str) -> None:
    result = await check_spf(resolver, CLIENT, sender, "client.example")
    assert result.result == expected, result
    assert result.identity == "mailfrom"
    assert result.domain == sender.split("@")[1]


@pytest.mark.peers
async def test_too_many_lookups_names_the_limit(resolver: dns.asyncresolver.Resolver) -> None:
    result = await check_spf(resolver, CLIENT, "bob@toomany.spf.test", "client.example")
    assert result.result == "permerror"
    assert "Too many DNS lookups" in result.explanation


@pytest.mark.peers
async def test_a_long_record_really_is_split_into_several_strings(spf_dns: DnsServer) -> None:
    reply = spf_dns.query("long.spf.test", "TXT")
    strings = [rr.strings for rrset in reply.answer for rr in rrset]
    assert len(strings) == 1 and len(strings[0]) > 1


@pytest.mark.peers
async def test_fail_carries_the_domains_explanation(resolver: dns.asyncresolver.Resolver) -> None:
    result = await check_spf(resolver, CLIENT, "eve@explained.spf.test", "client.example")
    assert result.result == "fail"
    assert result.explanation == f"{CLIENT} may not send mail for explained.spf.test"
    verdict = spf_verdict(result, "reject")
    assert verdict is not None
    why = f"{CLIENT} may not send mail for explained.spf.test"
    assert verdict.reply == f"550 5.7.23 SPF fail for explained.spf.test: {why}"


@pytest.mark.peers
async def test_the_null_sender_is_checked_against_helo(resolver: dns.asyncresolver.Resolver) -> None:
    result = await check_spf(resolver, CLIENT, "", "helo.spf.test")
    assert (result.result, result.identity, result.domain) == ("pass", "helo", "helo.spf.test")
    other = await check_spf(resolver, "192.0.2.50", "", "helo.spf.test")
    assert other.result == "fail"


@pytest.mark.peers
async def test_another_client_ip_fails(resolver: dns.asyncresolver.Resolver) -> None:
    result = await check_spf(resolver, "192.0.2.50", "alice@pass.spf.test", "client.example")
    assert result.result == "fail"


@pytest.mark.peers
async def test_dns_down_is_a_temperror(spf_dns: DnsServer, resolver: dns.asyncresolver.Resolver) -> None:
    spf_dns.stop()
    result = await check_spf(resolver, CLIENT, "alice@pass.spf.test", "client.example", query_time=0.5)
    assert result.result == "temperror"
    verdict = spf_verdict(result, "reject")
    assert verdict is not None and verdict.code == 451
