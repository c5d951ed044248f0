"""DMARC policy records (RFC 7489 6.3, 6.4): what parses, and the message for what does not."""

from __future__ import annotations

import pytest

from smtp_relay.dnscheck.dmarc import DmarcError, DmarcRecord, is_dmarc, parse_dmarc


def test_a_full_record() -> None:
    record = parse_dmarc(
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=50; "
        "rua=mailto:Agg@Example.test!10m, mailto:other@example.test; ruf=mailto:f@example.test; fo=1:d; ri=3600;"
    )
    assert record == DmarcRecord(
        p="reject",
        sp="quarantine",
        adkim="s",
        aspf="r",
        pct=50,
        rua=("Agg@Example.test", "other@example.test"),
        ruf=("f@example.test",),
        fo="1:d",
        rf="afrf",
        ri=3600,
    )


def test_defaults_and_case() -> None:
    record = parse_dmarc("v=DMARC1;P=None")
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct, record.rua) == (
        "none",
        "none",
        "r",
        "r",
        100,
        (),
    )
    assert parse_dmarc("v = DMARC1 ; p = quarantine ; unknown=ignored").p == "quarantine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p=reject; v=DMARC1", "must start with v=DMARC1"),
        ("v=dmarc1; p=none", "v=dmarc1 is not v=DMARC1"),
        ("v=DMARC1", "p= must follow v=DMARC1"),
        (
            "v=DMARC1; rua=mailto:a@example.test; p=none",
            r"p= must follow v=DMARC1 \(RFC 7489 6.3\) \(it appears later\)",
        ),
        ("v=DMARC1; p=block", "p=block is not one of none, quarantine, reject"),
        ("v=DMARC1; p=none; sp=maybe", "sp=maybe is not one of"),
        ("v=DMARC1; p=none; pct=150", "pct=150 must be a whole number from 0 to 100"),
        ("v=DMARC1; p=none; pct=-1", "pct=-1 must be"),
        ("v=DMARC1; p=none; adkim=x", "adkim=x must be r"),
        ("v=DMARC1; p=none; aspf=relaxed", "aspf=relaxed must be r"),
        ("v=DMARC1; p=none; rua=dmarc@example.test", "rua: 'dmarc@example.test' is not a mailto: URI"),
        ("v=DMARC1; p=none; rua=https://example.test/r", "is not a mailto: URI"),
        ("v=DMARC1; p=none; ruf=mailto:nobody", "ruf: 'mailto:nobody' is not a mailto: URI with an email address"),
        ("v=DMARC1; p=none; rua=mailto:a@example.test!lots", "has a bad size limit"),
        ("v=DMARC1; p=none; p=reject", "p= appears twice"),
        ("v=DMARC1; p=none;; pct=5", "an empty tag between two ';'"),
        ("v=DMARC1; p=none; garbage", "'garbage' is not a tag=value pair"),
        ("v=DMARC1; p=none; fo=2", "fo=2 must be 0, 1, d or s"),
        ("v=DMARC1; p=none; ri=soon", "ri=soon must be a number of seconds"),
    ],
)
def test_invalid_records_say_why(text: str, message: str) -> None:
    with pytest.raises(DmarcError, match=message):
        parse_dmarc(text)


def test_what_claims_to_be_dmarc() -> None:
    assert is_dmarc("v=DMARC1; p=none")
    assert is_dmarc("v=DMARC1")
    assert not is_dmarc("v=spf1 -all")
    assert not is_dmarc("v=DMARC10; p=none")
