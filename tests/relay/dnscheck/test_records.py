"""The records a SendingDomain must publish, from its spec."""

from __future__ import annotations

from typing import Any

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.dnscheck.records import ExpectedRecord, effective_dns, expected_records, spf_record


def spec(**fields: Any) -> SendingDomainSpec:
    return SendingDomainSpec.model_validate({"domain": "example.test", **fields})


def test_every_record_of_a_full_spec() -> None:
    full = spec(
        spf={"include": "_spf.fleet.test", "egressIps": ["192.0.2.10", "198.51.100.0/24", "2001:db8::1/128"]},
        dmarc={"required": True, "policy": "quarantine", "reportTo": "dmarc@example.test"},
        returnPath={"domain": "bounces.example.test", "mx": "mx.fleet.test"},
    )
    spf = "v=spf1 ip4:192.0.2.10 ip4:198.51.100.0/24 ip6:2001:db8::1 include:_spf.fleet.test -all"
    assert expected_records(full, {"rf202612a": "v=DKIM1; k=rsa; p=AAAA", "rf202612b": "v=DKIM1; k=ed25519; p=BB"}) == [
        ExpectedRecord("dkim", "TXT", "rf202612a._domainkey.example.test", "v=DKIM1; k=rsa; p=AAAA", True),
        ExpectedRecord("dkim", "TXT", "rf202612b._domainkey.example.test", "v=DKIM1; k=ed25519; p=BB", True),
        ExpectedRecord("spf", "TXT", "example.test", spf, True),
        ExpectedRecord(
            "dmarc", "TXT", "_dmarc.example.test", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.test", True
        ),
        ExpectedRecord("returnPath", "MX", "bounces.example.test", "10 mx.fleet.test", True),
        ExpectedRecord("returnPath", "TXT", "bounces.example.test", spf, True),
    ]


def test_defaults_advisory_dmarc_and_no_return_path() -> None:
    records = expected_records(spec(), {})
    assert records == [
        ExpectedRecord("spf", "TXT", "example.test", "v=spf1 -all", True),
        ExpectedRecord("dmarc", "TXT", "_dmarc.example.test", "v=DMARC1; p=none", False),
    ]


def test_a_brought_key_without_its_pem_is_listed_to_be_looked_at() -> None:
    own = spec(dkim={"selector": "mail2024", "secretName": "dkim-key"})
    assert expected_records(own, {})[0] == ExpectedRecord("dkim", "TXT", "mail2024._domainkey.example.test", "", True)
    with_key = expected_records(own, {"mail2024": "v=DKIM1; p=X"})
    assert [r.expected for r in with_key if r.purpose == "dkim"] == ["v=DKIM1; p=X"]


def test_report_to_may_already_be_a_mailto_uri() -> None:
    records = expected_records(spec(dmarc={"reportTo": "mailto:agg@example.test"}), {})
    assert records[-1].expected == "v=DMARC1; p=none; rua=mailto:agg@example.test"


def test_spf_include_only() -> None:
    assert spf_record(spec(spf={"include": "_SPF.Fleet.test."})) == "v=spf1 include:_spf.fleet.test -all"


def test_the_domains_own_nameservers_win_over_the_fallback() -> None:
    assert effective_dns(spec(dns={"nameservers": ["127.0.0.1:5353"]}), ["10.0.0.1"]).nameservers == ["127.0.0.1:5353"]
    assert effective_dns(spec(), ["10.0.0.1"]).nameservers == ["10.0.0.1"]
    assert effective_dns(spec()).nameservers == []
