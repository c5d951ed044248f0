"""The headers composed from the policy's findings at end of DATA (what the engine is handed as its composer)."""

from __future__ import annotations

import logging

import pytest

from smtp_relay.cleanup.headers import policy_headers
from smtp_relay.policy.verdict import SpamReport

HOST = "relay.example.com"


def compose(report: SpamReport | None, spf_result: str | None = None, tags: tuple[str, ...] = ()) -> dict[str, str]:
    headers = policy_headers(
        hostname=HOST,
        threshold=5.0,
        report=report,
        spf_result=spf_result,
        mail_from="ann@example.org",
        helo="client.example.org",
        tags=tags,
    )
    return dict(headers)


def test_nothing_to_say_adds_nothing() -> None:
    assert compose(None) == {}


def test_without_a_report_only_the_flag_and_spf() -> None:
    assert compose(None, "pass") == {"Authentication-Results": f"{HOST}; spf=pass smtp.mailfrom=ann@example.org"}
    assert compose(None, tags=("DNSBL_bl.test",)) == {"X-Spam-Flag": "YES", "Authentication-Results": f"{HOST}; none"}


def test_a_tag_flags_a_low_score_and_joins_the_symbols() -> None:
    headers = compose(SpamReport(1.0, ("MISSING_DATE",), "builtin"), "fail", tags=("SPF_FAIL",))
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"] == "Yes, score=1.0 required=5.0 tests=MISSING_DATE,SPF_FAIL engine=builtin"
    assert headers["Authentication-Results"] == f"{HOST}; spf=fail smtp.mailfrom=ann@example.org"


def test_a_clean_score_without_tags_is_not_flagged() -> None:
    headers = compose(SpamReport(0.0, (), "builtin"), "pass")
    assert "X-Spam-Flag" not in headers and headers["X-Spam-Status"].startswith("No, score=0.0")


def test_an_unusable_host_name_drops_the_headers_not_the_message(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="smtp_relay.cleanup.headers"):
        headers = policy_headers(
            hostname="relay\r\nBcc: x@example.com",
            threshold=5.0,
            report=SpamReport(9.0, (), "builtin"),
            spf_result=None,
            mail_from="",
            helo="",
            tags=(),
        )
    assert headers == []
    assert "policy headers not added" in caplog.text
