"""Spam and Authentication-Results headers: their format, folding, and refusal of header injection."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

import pytest

from smtp_relay.cleanup.headers import (
    HeaderInjectionError,
    authentication_results,
    fold,
    prepend_headers,
    spam_headers,
    spf_resinfo,
)
from smtp_relay.policy.verdict import SpamReport

MESSAGE = b"From: ann@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def test_spam_headers_above_threshold() -> None:
    report = SpamReport(score=7.25, symbols=("MISSING_DATE", "GTUBE"), engine="builtin")
    headers = spam_headers(
        report, threshold=5.0, hostname="relay.example.com", auth_results=[spf_resinfo("softfail", "a@example.org")]
    )
    assert headers == [
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", "7.2"),
        ("X-Spam-Status", "Yes, score=7.2 required=5.0 tests=GTUBE,MISSING_DATE engine=builtin"),
        ("Authentication-Results", "relay.example.com; spf=softfail smtp.mailfrom=a@example.org"),
    ]


def test_spam_headers_below_threshold_have_no_flag() -> None:
    headers = dict(spam_headers(SpamReport(1.0, (), "rspamd"), threshold=5.0, hostname="relay.example.com"))
    assert "X-Spam-Flag" not in headers
    assert headers["X-Spam-Status"] == "No, score=1.0 required=5.0 tests=none engine=rspamd"
    assert headers["Authentication-Results"] == "relay.example.com; none"


def test_symbols_from_a_scanner_cannot_inject() -> None:
    report = SpamReport(20.0, ("EVIL\r\nBcc: victim@example.com", "OK_RULE"), "rspamd")
    data = prepend_headers(MESSAGE, spam_headers(report, threshold=5.0, hostname="relay.example.com"))
    parsed = message_from_bytes(data, policy=default)
    assert parsed["Bcc"] is None
    assert "tests=EVIL__Bcc__victim_example.com,OK_RULE " in str(parsed["X-Spam-Status"])


@pytest.mark.parametrize(
    ("result", "mail_from", "helo", "expected"),
    [
        ("pass", "ann@example.com", None, "spf=pass smtp.mailfrom=ann@example.com"),
        ("FAIL", "ann@example.com", None, "spf=fail smtp.mailfrom=ann@example.com"),
        ("neutral", '"odd local"@example.com', None, "spf=neutral smtp.mailfrom=example.com"),
        ("none", "", "mail.example.com", "spf=none smtp.helo=mail.example.com"),
        ("temperror", "", "bad helo;", "spf=temperror"),
    ],
)
def test_spf_resinfo(result: str, mail_from: str, helo: str | None, expected: str) -> None:
    assert spf_resinfo(result, mail_from, helo=helo) == expected


def test_spf_resinfo_refuses_unknown_result() -> None:
    with pytest.raises(ValueError, match="not an SPF result"):
        spf_resinfo("maybe", "a@example.com")


def test_authentication_results() -> None:
    value = authentication_results("mx.example.org", ("pass", "a@example.net"), resinfo=["dkim=none"])
    assert value == "mx.example.org; spf=pass smtp.mailfrom=a@example.net; dkim=none"
    assert authentication_results("mx.example.org") == "mx.example.org; none"


@pytest.mark.parametrize("hostname", ["mx.example.org\r\nX: y", "", "a b", "mx;example"])
def test_authentication_results_refuses_bad_authserv_id(hostname: str) -> None:
    with pytest.raises(HeaderInjectionError):
        authentication_results(hostname)


@pytest.mark.parametrize("resinfo", ["spf=pass\r\nBcc: x@example.com", "a; b", " "])
def test_authentication_results_refuses_bad_resinfo(resinfo: str) -> None:
    with pytest.raises(HeaderInjectionError):
        authentication_results("mx.example.org", resinfo=[resinfo])


def test_prepend_headers_crlf_and_order() -> None:
    data = prepend_headers(MESSAGE, [("X-Spam-Flag", "YES"), ("X-Spam-Score", "9.0")])
    assert data == b"X-Spam-Flag: YES\r\nX-Spam-Score: 9.0\r\n" + MESSAGE


def test_prepend_headers_follows_bare_lf_messages() -> None:
    assert prepend_headers(b"Subject: x\n\nbody\n", [("X-A", "1")]) == b"X-A: 1\nSubject: x\n\nbody\n"


def test_prepend_nothing_is_identity() -> None:
    assert prepend_headers(MESSAGE, []) is MESSAGE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Spam-Status", "Yes\r\nBcc: victim@example.com"),
        ("X-Spam-Status", "Yes\nBcc: victim@example.com"),
        ("X-Spam-Status", "Yes\rBcc: victim@example.com"),
        ("X-Spam-Status", "Yes\x00"),
        ("X-Spam-Status", "Ja, schön"),
        ("Bcc: victim@example.com\r\nX", "1"),
        ("X Spam", "1"),
        ("X:Spam", "1"),
        ("", "1"),
    ],
)
def test_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(HeaderInjectionError):
        prepend_headers(MESSAGE, [(name, value)])


def test_long_values_fold_at_whitespace() -> None:
    value = " ".join(f"word{i}" for i in range(60))
    folded = fold("X-Long", value)
    lines = folded.split("\r\n")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert all(line[0] in " \t" for line in lines[1:])
    assert " ".join(folded.replace("\r\n", "").split()) == f"X-Long: {value}"


def test_long_test_lists_fold_after_commas() -> None:
    tests = ",".join(f"RULE_NUMBER_{i}" for i in range(40))
    folded = fold("X-Spam-Status", f"Yes, score=99.0 required=5.0 tests={tests}")
    lines = folded.split("\r\n")
    assert all(len(line) <= 78 for line in lines)
    parsed = message_from_bytes(folded.encode() + b"\r\n\r\n", policy=default)
    assert "".join(str(parsed["X-Spam-Status"]).split()).endswith(tests)


def test_unbreakable_value_over_998_is_refused() -> None:
    with pytest.raises(HeaderInjectionError, match="longer than 998"):
        fold("X-Blob", "x" * 1200)


def test_prepended_headers_parse_back() -> None:
    report = SpamReport(16.0, tuple(f"SYM_{i}" for i in range(30)), "rspamd")
    headers = spam_headers(report, threshold=5.0, hostname="relay.example.com")
    parsed = message_from_bytes(prepend_headers(MESSAGE, headers), policy=default)
    assert parsed["X-Spam-Flag"] == "YES"
    assert parsed["X-Spam-Score"] == "16.0"
    assert parsed["Subject"] == "hi"
    assert parsed.get_content().strip() == "body"
