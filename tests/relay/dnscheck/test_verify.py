"""Per-record verdicts from observations, without DNS: every rule of verify.py."""

from __future__ import annotations

import base64

import pytest

from smtp_relay.dnscheck.dkim_keys import public_txt_from_pem
from smtp_relay.dnscheck.records import ExpectedRecord
from smtp_relay.dnscheck.verify import (
    IncludeWalk,
    Observation,
    SpfEvaluation,
    check_dkim,
    check_dmarc,
    check_mx,
    check_spf,
    dkim_not_started,
)
from tests.relay.dnscheck.keys import ed25519_pem, rsa_pem

NAME = "s1._domainkey.example.test"


def dkim(expected: str) -> ExpectedRecord:
    return ExpectedRecord("dkim", "TXT", NAME, expected, True)


def found(*values: str) -> Observation:
    return Observation("found", values)


RSA = public_txt_from_pem(rsa_pem())
ED = public_txt_from_pem(ed25519_pem())
SPF = ExpectedRecord("spf", "TXT", "example.test", "v=spf1 ip4:192.0.2.10 -all", True)
DMARC = ExpectedRecord("dmarc", "TXT", "_dmarc.example.test", "v=DMARC1; p=reject", False)
MX = ExpectedRecord("returnPath", "MX", "bounces.example.test", "10 mx.fleet.test", True)


def _p(value: str) -> str:
    return value.split("p=", 1)[1]


# --- lookups that gave nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("record", [dkim(RSA), SPF, DMARC, MX])
def test_no_name_no_type_and_no_answer(record: ExpectedRecord) -> None:
    for seen, status, error in [
        (Observation("noHost"), "Failed", "HOST_NOT_FOUND"),
        (Observation("noType"), "Failed", "TYPE_NOT_FOUND"),
        (Observation("serverError", error="SERVFAIL from 127.0.0.1:53"), "TemporaryFailure", "DNS_SERVER_ERROR"),
    ]:
        if record.purpose == "dkim":
            check = check_dkim(record, seen)
        elif record.purpose == "spf":
            check = check_spf(record, seen, [])
        elif record.purpose == "dmarc":
            check = check_dmarc(record, seen)
        else:
            check = check_mx(record, seen)
        assert (check.status, check.error_type, check.observed) == (status, error, "")
        assert check.required is record.required
        if status == "Failed":
            assert record.expected in check.message  # says what to publish
        else:
            assert "SERVFAIL from 127.0.0.1:53" in check.message


def test_a_missing_name_says_where_to_publish_what() -> None:
    check = check_dkim(dkim(RSA), Observation("noHost"))
    assert check.message == f'{NAME} does not exist: publish {NAME} TXT "{RSA}"'
    assert check_mx(MX, Observation("noType")).message == (
        "bounces.example.test has no MX record: publish bounces.example.test MX 10 mx.fleet.test"
    )


# --- DKIM ------------------------------------------------------------------------------------------


def test_dkim_right_rsa_and_ed25519_keys() -> None:
    assert check_dkim(dkim(RSA), found(RSA)).status == "Success"
    assert check_dkim(dkim(ED), found(ED)).status == "Success"


def test_dkim_tolerates_whitespace_k_default_and_other_txt_records() -> None:
    p = _p(RSA)
    folded = "v=DKIM1 ;\tp=" + " ".join(p[i : i + 60] for i in range(0, len(p), 60)) + " ; t=y"
    check = check_dkim(dkim(RSA), found("google-site-verification=abc", folded))
    assert (check.status, check.observed) == ("Success", folded)
    assert check_dkim(dkim(RSA), found(f"p={p}")).status == "Success"  # k= defaults to rsa, v= is optional


def test_dkim_one_right_record_among_wrong_ones_counts() -> None:
    other = public_txt_from_pem(ed25519_pem(1))
    assert check_dkim(dkim(ED), found(other, ED)).status == "Success"


@pytest.mark.parametrize(
    ("published", "why"),
    [
        (f"v=DKIM1; k=rsa; p={_p(public_txt_from_pem(rsa_pem(1)))}", "a different public key"),
        (f"v=DKIM1; k=ed25519; p={_p(RSA)}", "it is a k=ed25519 key, the signing key is k=rsa"),
        ("v=DKIM1; k=rsa; p=", "the key is revoked"),
        ("v=DKIM1; k=rsa; p=!!notbase64", "p= is not valid base64"),
        (f"k=rsa; v=DKIM1; p={_p(RSA)}", "v= must be DKIM1 and come first"),
        (f"v=DKIM1; p={_p(RSA)}; p={_p(RSA)}", "p= appears twice"),
        ("v=DKIM1; k=rsa", "it has no p= tag"),
    ],
)
def test_dkim_wrong_records_say_why(published: str, why: str) -> None:
    check = check_dkim(dkim(RSA), found(published))
    assert (check.status, check.error_type, check.observed) == ("Failed", "INVALID_VALUE", published)
    assert why in check.message
    assert check.message.endswith(f'publish {NAME} TXT "{RSA}"')


def test_dkim_name_with_only_other_txt_records() -> None:
    check = check_dkim(dkim(RSA), found("hello world"))
    assert (check.status, check.error_type, check.observed) == ("Failed", "TYPE_NOT_FOUND", "hello world")
    assert "no DKIM key record" in check.message


def test_dkim_without_a_known_key_reports_what_is_published() -> None:
    check = check_dkim(dkim(""), found("hello", ED))
    assert (check.status, check.error_type, check.observed) == ("Pending", None, ED)
    assert "no key known locally" in check.message
    assert check_dkim(dkim(""), Observation("noHost")).message.endswith(f"publish the TXT record of your key at {NAME}")


def test_dkim_not_started() -> None:
    check = dkim_not_started("example.test")
    assert (check.status, check.name) == ("NotStarted", "<selector>._domainkey.example.test")


def test_dkim_key_bytes_are_compared_not_text() -> None:
    raw = base64.b64decode(_p(ED))
    reencoded = "v=DKIM1; k=ED25519; p=" + base64.b64encode(raw).decode()
    assert check_dkim(dkim(ED), found(reencoded)).status == "Success"


# --- SPF -------------------------------------------------------------------------------------------

RECORD = "v=spf1 ip4:192.0.2.10 -all"


def test_spf_passes_when_every_egress_address_passes() -> None:
    evaluations = [SpfEvaluation("192.0.2.10", "pass"), SpfEvaluation("2001:db8::1", "pass")]
    check = check_spf(SPF, found("other", RECORD), evaluations)
    assert (check.status, check.observed) == ("Success", RECORD)
    assert check.message == "SPF passes for 192.0.2.10, 2001:db8::1"


@pytest.mark.parametrize("result", ["fail", "softfail", "neutral", "none", "permerror"])
def test_spf_anything_but_pass_is_invalid_and_names_the_address(result: str) -> None:
    evaluations = [SpfEvaluation("192.0.2.10", "pass"), SpfEvaluation("192.0.2.99", result, "because")]
    check = check_spf(SPF, found(RECORD), evaluations)
    assert (check.status, check.error_type) == ("Failed", "INVALID_VALUE")
    assert f"192.0.2.99 gets {result} (because)" in check.message
    assert "192.0.2.10 gets" not in check.message


def test_spf_temperror_is_temporary_unless_another_address_fails() -> None:
    temp = SpfEvaluation("192.0.2.10", "temperror", "DNS TXT lookup of x timed out")
    check = check_spf(SPF, found(RECORD), [temp])
    assert (check.status, check.error_type) == ("TemporaryFailure", "DNS_SERVER_ERROR")
    assert "timed out" in check.message
    assert check_spf(SPF, found(RECORD), [temp, SpfEvaluation("192.0.2.11", "fail")]).status == "Failed"


def test_spf_two_records_or_none() -> None:
    two = check_spf(SPF, found(RECORD, "v=spf1 -all"), [SpfEvaluation("192.0.2.10", "pass")])
    assert (two.status, two.error_type) == ("Failed", "INVALID_VALUE")
    assert "2 SPF records" in two.message
    none = check_spf(SPF, found("v=spf10 nothing", "hello"), [])
    assert (none.status, none.error_type) == ("Failed", "TYPE_NOT_FOUND")


def test_spf_by_include() -> None:
    record = "v=spf1 include:_spf.fleet.test -all"
    assert check_spf(SPF, found(record), [], "_spf.fleet.test", IncludeWalk(True)).status == "Success"
    missing = check_spf(SPF, found("v=spf1 -all"), [], "_spf.fleet.test", IncludeWalk(False))
    assert (missing.status, missing.error_type) == ("Failed", "INVALID_VALUE")
    assert "does not reach include:_spf.fleet.test" in missing.message
    broken = check_spf(SPF, found(record), [], "_spf.fleet.test", IncludeWalk(False, "permerror: too many"))
    assert "permerror: too many" in broken.message
    down = check_spf(SPF, found(record), [], "_spf.fleet.test", IncludeWalk(False, "timed out", temporary=True))
    assert (down.status, down.error_type) == ("TemporaryFailure", "DNS_SERVER_ERROR")


def test_spf_with_nothing_to_check_is_pending() -> None:
    check = check_spf(SPF, found("v=spf1 -all"), [])
    assert (check.status, check.error_type) == ("Pending", None)
    assert "set spf.egressIps" in check.message and "spf.include" in check.message


# --- DMARC and MX ----------------------------------------------------------------------------------


def test_dmarc_present_and_its_policy() -> None:
    check = check_dmarc(DMARC, found("v=DMARC1; p=none; rua=mailto:a@example.test"))
    assert (check.status, check.required) == ("Success", False)
    assert check.message == "DMARC policy p=none (recommended: p=reject)"
    assert check_dmarc(DMARC, found("v=DMARC1; p=reject")).message == "DMARC policy p=reject"


def test_dmarc_malformed_gives_the_parsers_message() -> None:
    check = check_dmarc(DMARC, found("v=DMARC1; p=sometimes"))
    assert (check.status, check.error_type) == ("Failed", "INVALID_VALUE")
    assert "p=sometimes is not one of none, quarantine, reject" in check.message
    two = check_dmarc(DMARC, found("v=DMARC1; p=none", "v=DMARC1; p=reject"))
    assert "2 DMARC records" in two.message
    assert check_dmarc(DMARC, found("not dmarc")).error_type == "TYPE_NOT_FOUND"


def test_mx_right_wrong_and_preference_ignored() -> None:
    assert check_mx(MX, found("20 MX.fleet.test")).status == "Success"
    wrong = check_mx(MX, found("10 mail.elsewhere.test"))
    assert (wrong.status, wrong.error_type, wrong.observed) == ("Failed", "INVALID_VALUE", "10 mail.elsewhere.test")
    assert wrong.message.endswith("publish bounces.example.test MX 10 mx.fleet.test")


def test_json_row_uses_status_field_names() -> None:
    row = check_mx(MX, found("10 mx.fleet.test")).to_json()
    assert row == {
        "purpose": "returnPath",
        "type": "MX",
        "name": "bounces.example.test",
        "expected": "10 mx.fleet.test",
        "observed": "10 mx.fleet.test",
        "status": "Success",
        "errorType": None,
        "message": "bounces.example.test receives bounces at mx.fleet.test",
        "required": True,
    }
