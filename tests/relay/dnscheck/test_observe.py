"""check_domain against a real authoritative DNS server (NSD on loopback) in every state."""

from __future__ import annotations

from typing import Any

import pytest

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.fields import DnsSpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.dnscheck.observe import check_domain, lookup
from smtp_relay.dnscheck.spf_walk import walk_include
from smtp_relay.dnscheck.verify import IncludeWalk, Observation, RecordCheck
from tests.peers.dns import DnsServer
from tests.relay.dnscheck.zones import ED_TXT, EGRESS, OTHER_IP, RSA_TXT, SELECTOR, ZONES

pytestmark = pytest.mark.peers

FLEET = "_spf.fleet.test"


@pytest.fixture
def server(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory(ZONES)  # type: ignore[no-any-return]


def spec(server: DnsServer, domain: str, **fields: Any) -> SendingDomainSpec:
    body = {"domain": domain, "dkim": {"selector": SELECTOR}, "dns": {"nameservers": [server.nameserver()]}}
    return SendingDomainSpec.model_validate({**body, **fields})


async def checks_of(spec: SendingDomainSpec, keys: dict[str, str] | None = None) -> dict[tuple[str, str], RecordCheck]:
    checks = await check_domain(spec, {} if keys is None else keys, spec.dns, lookup_time=2.0)
    by_kind = {(c.purpose, c.type): c for c in checks}
    assert len(by_kind) == len(checks)
    return by_kind


def state(check: RecordCheck) -> tuple[str, str | None]:
    return check.status, check.error_type


async def test_a_domain_with_everything_published(server: DnsServer) -> None:
    # the RSA-2048 record really is two character-strings on the wire; the check joins them
    reply = server.query(f"{SELECTOR}._domainkey.good.test", "TXT")
    assert [len(rdata.strings) for rdata in reply.answer[0]] == [2]
    domain = spec(
        server,
        "good.test",
        spf={"egressIps": [f"{EGRESS}/32"]},
        dmarc={"required": True, "policy": "quarantine"},
        returnPath={"domain": "bounces.good.test", "mx": "mx.fleet.test"},
    )
    checks = await checks_of(domain, {SELECTOR: RSA_TXT})
    assert {kind: state(c) for kind, c in checks.items()} == {
        ("dkim", "TXT"): ("Success", None),
        ("spf", "TXT"): ("Success", None),
        ("dmarc", "TXT"): ("Success", None),
        ("returnPath", "MX"): ("Success", None),
        ("returnPath", "TXT"): ("Success", None),
    }
    assert checks["dkim", "TXT"].observed == RSA_TXT
    assert checks["spf", "TXT"].observed == f"v=spf1 ip4:{EGRESS} -all"
    assert checks["spf", "TXT"].message == f"SPF passes for {EGRESS}"
    assert checks["returnPath", "MX"].observed == "10 mx.fleet.test"


async def test_ed25519_key_spf_by_include_and_no_dmarc(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "ed.test", spf={"egressIps": ["192.0.2.20"]}), {SELECTOR: ED_TXT})
    assert state(checks["dkim", "TXT"]) == ("Success", None)
    assert checks["dkim", "TXT"].observed == ED_TXT  # the note beside it does not count
    assert state(checks["spf", "TXT"]) == ("Success", None)  # 192.0.2.20 passes through include:_spf.fleet.test
    dmarc = checks["dmarc", "TXT"]
    assert (dmarc.status, dmarc.error_type, dmarc.required) == ("Failed", "HOST_NOT_FOUND", False)
    assert dmarc.message == '_dmarc.ed.test does not exist: publish _dmarc.ed.test TXT "v=DMARC1; p=none"'


async def test_a_domain_with_everything_wrong(server: DnsServer) -> None:
    domain = spec(
        server,
        "wrong.test",
        spf={"egressIps": [EGRESS], "include": FLEET},
        returnPath={"domain": "bounces.wrong.test", "mx": "mx.fleet.test"},
    )
    checks = await checks_of(domain, {SELECTOR: RSA_TXT})
    assert {kind: state(c) for kind, c in checks.items()} == {
        ("dkim", "TXT"): ("Failed", "INVALID_VALUE"),
        ("spf", "TXT"): ("Failed", "INVALID_VALUE"),
        ("dmarc", "TXT"): ("Failed", "INVALID_VALUE"),
        ("returnPath", "MX"): ("Failed", "INVALID_VALUE"),
        ("returnPath", "TXT"): ("Failed", "INVALID_VALUE"),
    }
    assert "a different public key" in checks["dkim", "TXT"].message
    spf = checks["spf", "TXT"]
    assert f"{EGRESS} gets fail" in spf.message  # the fleet's include is missing: check_host says fail
    assert spf.message.endswith(f'publish wrong.test TXT "v=spf1 ip4:{EGRESS} include:{FLEET} -all"')
    assert "p=sometimes is not one of none, quarantine, reject" in checks["dmarc", "TXT"].message
    assert checks["returnPath", "MX"].observed == "10 mail.elsewhere.test"


async def test_missing_dkim_softfail_and_a_dmarc_name_without_dmarc(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "soft.test", spf={"egressIps": [EGRESS]}), {SELECTOR: ED_TXT})
    assert state(checks["dkim", "TXT"]) == ("Failed", "HOST_NOT_FOUND")
    spf = checks["spf", "TXT"]
    assert state(spf) == ("Failed", "INVALID_VALUE")
    assert f"{EGRESS} gets softfail" in spf.message
    assert state(checks["dmarc", "TXT"]) == ("Failed", "TYPE_NOT_FOUND")


async def test_too_many_lookups_is_a_permerror_with_pyspfs_explanation(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "toomany.test", spf={"egressIps": [EGRESS]}))
    spf = checks["spf", "TXT"]
    assert state(spf) == ("Failed", "INVALID_VALUE")
    assert f"{EGRESS} gets permerror" in spf.message
    assert "Too many DNS lookups" in spf.message


async def test_egress_networks_are_evaluated_at_their_first_address(server: DnsServer) -> None:
    egress = ["2001:db8:10::/64", "198.51.100.0/28"]
    checks = await checks_of(spec(server, "v6.test", spf={"egressIps": egress}))
    assert checks["spf", "TXT"].message == "SPF passes for 2001:db8:10::, 198.51.100.0"
    assert checks["spf", "TXT"].expected == "v=spf1 ip6:2001:db8:10::/64 ip4:198.51.100.0/28 -all"
    outside = await checks_of(spec(server, "v6.test", spf={"egressIps": ["2001:db8:11::1"]}))
    assert "2001:db8:11::1 gets fail" in outside["spf", "TXT"].message


async def test_a_name_without_the_record_type(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "no-spf.test", spf={"include": FLEET}))
    assert state(checks["spf", "TXT"]) == ("Failed", "TYPE_NOT_FOUND")  # the apex has SOA and NS, no TXT
    assert checks["spf", "TXT"].message.startswith("no-spf.test has no TXT record: publish no-spf.test TXT")


@pytest.mark.parametrize(
    ("domain", "status", "why"),
    [
        ("ed.test", "Success", f"the SPF record includes {FLEET}"),
        ("nested.test", "Success", f"the SPF record includes {FLEET}"),
        ("redirect.test", "Success", f"the SPF record includes {FLEET}"),
        ("negated.test", "Failed", f"does not reach include:{FLEET}"),
        ("after-all.test", "Failed", f"does not reach include:{FLEET}"),
        ("good.test", "Failed", f"does not reach include:{FLEET}"),
        ("toomany.test", "Failed", "permerror: more than 10 DNS lookups"),
        ("dangling.test", "Failed", "permerror: gone.fleet.test has no SPF record"),
        ("macro.test", "Failed", "the SPF record of macro.test cannot be followed without a client"),
    ],
)
async def test_include_only_is_decided_by_walking_the_record(
    server: DnsServer, domain: str, status: str, why: str
) -> None:
    check = (await checks_of(spec(server, domain, spf={"include": FLEET})))["spf", "TXT"]
    assert check.status == status
    assert why in check.message


async def test_the_walk_follows_includes_and_needs_a_record_at_each(server: DnsServer) -> None:
    resolver = make_resolver(DnsSpec(nameservers=[server.nameserver()]))

    async def txt(name: str) -> Observation:
        return await lookup(resolver, name, "TXT", 2.0)

    assert await walk_include(txt, "nested.test", FLEET) == IncludeWalk(True)
    assert await walk_include(txt, "nested.test", "_spf.other.test") == IncludeWalk(False)  # followed, not found
    assert await walk_include(txt, "no-spf.test", FLEET) == IncludeWalk(
        False, "permerror: no-spf.test has no SPF record"
    )
    missing = await walk_include(txt, "negated.test", FLEET)
    assert missing == IncludeWalk(False)


async def test_nothing_to_check_and_no_key_known(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "ed.test"))
    assert state(checks["spf", "TXT"]) == ("Pending", None)
    dkim = checks["dkim", "TXT"]
    assert (dkim.status, dkim.observed) == ("Pending", ED_TXT)
    assert "no key known locally" in dkim.message


async def test_no_selector_and_no_key_is_not_started(server: DnsServer) -> None:
    domain = SendingDomainSpec.model_validate({"domain": "good.test", "dns": {"nameservers": [server.nameserver()]}})
    checks = await check_domain(domain, {}, domain.dns)
    assert (checks[0].purpose, checks[0].status) == ("dkim", "NotStarted")


async def test_a_stopped_server_is_a_temporary_failure_everywhere(server: DnsServer) -> None:
    server.stop()
    domain = spec(
        server,
        "good.test",
        spf={"egressIps": [EGRESS]},
        returnPath={"domain": "bounces.good.test", "mx": "mx.fleet.test"},
    )
    checks = await check_domain(domain, {SELECTOR: RSA_TXT}, domain.dns, lookup_time=1.0)
    assert len(checks) == 5
    for check in checks:
        assert state(check) == ("TemporaryFailure", "DNS_SERVER_ERROR"), check
        assert check.message.startswith(f"DNS did not answer for {check.name}")


async def test_a_name_outside_the_servers_zones_is_refused_and_temporary(server: DnsServer) -> None:
    checks = await checks_of(spec(server, "unknown.test", spf={"egressIps": [OTHER_IP]}))
    spf = checks["spf", "TXT"]
    assert state(spf) == ("TemporaryFailure", "DNS_SERVER_ERROR")
    assert f"REFUSED from {server.host}:{server.port}" in spf.message
