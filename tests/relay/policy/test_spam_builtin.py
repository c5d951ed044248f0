"""The builtin scorer, rule by rule, with plain messages."""

from __future__ import annotations

import base64

import pytest

from smtp_relay.policy.mime import parse_message
from smtp_relay.policy.spam_builtin import GTUBE, RULES, score_builtin

HEADERS = (
    "From: Ann Example <ann@example.com>\r\nTo: bob@example.net\r\nSubject: Lunch on Friday\r\n"
    "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lunch.1@example.com>\r\n"
)


def msg(body: str = "Shall we meet at noon?\r\n", headers: str = HEADERS, content_type: str = "") -> bytes:
    return (headers + content_type + "\r\n" + body).encode()


def html_msg(html: str, headers: str = HEADERS) -> bytes:
    return msg(html, headers, "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")


def symbols(data: bytes, spf_result: str | None = None) -> tuple[str, ...]:
    return score_builtin(data, spf_result=spf_result).symbols


def test_clean_message_scores_zero() -> None:
    report = score_builtin(msg())
    assert report.score == 0.0
    assert isinstance(report.score, float)
    assert report.symbols == ()
    assert report.engine == "builtin"


def test_rules_are_documented() -> None:
    for name, rule in RULES.items():
        assert rule.name == name
        assert rule.description.endswith(".")
        assert rule.score > 0


def test_gtube_raw() -> None:
    report = score_builtin(msg("Test\r\n" + GTUBE.decode() + "\r\n"))
    assert report.symbols == ("GTUBE",)
    assert report.score == 1000.0


def test_gtube_in_base64_text_part() -> None:
    body = base64.b64encode(b"spam test " + GTUBE).decode()
    data = msg(body + "\r\n", content_type="Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n")
    assert "GTUBE" in symbols(data)


@pytest.mark.parametrize(
    ("drop", "rule"),
    [("Date", "MISSING_DATE"), ("Message-ID", "MISSING_MID"), ("From", "MISSING_FROM"), ("Subject", "MISSING_SUBJECT")],
)
def test_missing_headers(drop: str, rule: str) -> None:
    headers = "".join(line + "\r\n" for line in HEADERS.split("\r\n") if line and not line.startswith(drop + ":"))
    report = score_builtin(msg(headers=headers))
    assert report.symbols == (rule,)
    assert report.score == RULES[rule].score


@pytest.mark.parametrize("sender", ["Ann <ann>", "ann@", "ann@localhost", "undisclosed"])
def test_from_without_domain(sender: str) -> None:
    assert symbols(msg(headers=HEADERS.replace("Ann Example <ann@example.com>", sender))) == ("FROM_NO_DOMAIN",)


def test_subject_all_caps() -> None:
    assert symbols(msg(headers=HEADERS.replace("Lunch on Friday", "FREE MONEY FOR YOU"))) == ("SUBJ_ALL_CAPS",)
    assert symbols(msg(headers=HEADERS.replace("Lunch on Friday", "RE: OK"))) == ()


def test_encoded_subject_all_caps() -> None:
    encoded = "=?utf-8?B?" + base64.b64encode("GRATIS GELD FÜR SIE".encode()).decode() + "?="
    assert symbols(msg(headers=HEADERS.replace("Lunch on Friday", encoded))) == ("SUBJ_ALL_CAPS",)


def test_exclamation_marks() -> None:
    assert symbols(msg(headers=HEADERS.replace("Lunch on Friday", "Lunch!!! Friday!"))) == ("SUBJ_EXCLAIM",)
    assert symbols(msg("Buy!!! now!!! cheap!!! best!!! price!!!\r\n")) == ("BODY_EXCLAIM",)
    assert symbols(msg("Great!!! See you.\r\n")) == ()


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.10/login",
        "https://[2001:db8::1]/x",
        "http://3221225994/",
        "http://0xc0.0x0.0x2.0xa/",
        "http://192.0.2.1:8080/",
    ],
)
def test_url_with_ip_host(url: str) -> None:
    assert symbols(msg(f"Please log in at {url} today.\r\n")) == ("URI_IP_HOST",)


def test_url_with_userinfo() -> None:
    assert symbols(msg("Log in: http://bank.example.com@login.example.org/\r\n")) == ("URI_USERINFO",)


def test_url_shortener() -> None:
    assert symbols(msg("Details: https://bit.ly/3xYz and www.example.com\r\n")) == ("URI_SHORTENER",)
    assert symbols(msg("Details: https://www.example.com/bit.ly\r\n")) == ()


def test_html_only() -> None:
    assert symbols(html_msg("<p>Hello</p>")) == ("HTML_ONLY",)


def test_html_with_text_alternative_is_fine() -> None:
    body = (
        "--ALT\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
        "--ALT\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n--ALT--\r\n"
    )
    data = msg(body, content_type='MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="ALT"\r\n')
    assert symbols(data) == ()


@pytest.mark.parametrize(
    "anchor",
    [
        '<a href="http://evil.example.org/login">https://www.paypal.com/</a>',
        "<a href='https://login.example.org'><b>www.bank.example.com</b></a>",
        '<a href="http://192.0.2.7/">www.bank.example.com</a>',
    ],
)
def test_html_link_mismatch(anchor: str) -> None:
    assert "HTML_LINK_MISMATCH" in symbols(html_msg(f"<p>Click {anchor}</p>"))


@pytest.mark.parametrize(
    "anchor",
    [
        '<a href="https://www.example.com/account">www.example.com</a>',
        '<a href="https://mail.example.com/">https://example.com</a>',
        '<a href="https://files.example.net/report.pdf">report.pdf</a>',
        '<a href="https://example.com/">click here</a>',
    ],
)
def test_html_link_match(anchor: str) -> None:
    assert "HTML_LINK_MISMATCH" not in symbols(html_msg(f"<p>{anchor}</p>"))


@pytest.mark.parametrize(
    ("result", "rule"), [("fail", "SPF_FAIL"), ("softfail", "SPF_SOFTFAIL"), ("SoftFail", "SPF_SOFTFAIL")]
)
def test_spf_result(result: str, rule: str) -> None:
    report = score_builtin(msg(), spf_result=result)
    assert report.symbols == (rule,)
    assert report.score == RULES[rule].score


@pytest.mark.parametrize("result", ["pass", "neutral", "none", "temperror", "permerror", None])
def test_other_spf_results_do_not_score(result: str | None) -> None:
    assert score_builtin(msg(), spf_result=result).score == 0.0


def test_scores_add_up() -> None:
    headers = "From: winner\r\nSubject: YOU HAVE WON!!!\r\n"
    report = score_builtin(
        html_msg('<a href="http://198.51.100.1/">www.lottery.example.com</a>', headers), spf_result="fail"
    )
    expected = {
        "MISSING_DATE", "MISSING_MID", "FROM_NO_DOMAIN", "SUBJ_ALL_CAPS", "SUBJ_EXCLAIM", "HTML_ONLY",
        "HTML_LINK_MISMATCH", "URI_IP_HOST", "SPF_FAIL",
    }  # fmt: skip
    assert set(report.symbols) == expected
    assert report.score == pytest.approx(sum(RULES[name].score for name in expected))


def test_text_attachment_is_not_scored_as_body() -> None:
    body = (
        "--M\r\nContent-Type: text/plain\r\n\r\nSee the log.\r\n"
        "--M\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=log.txt\r\n\r\n"
        "http://192.0.2.1/ http://192.0.2.2/\r\n--M--\r\n"
    )
    data = msg(body, content_type='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n')
    assert symbols(data) == ()


def test_parsed_tree_can_be_shared() -> None:
    data = html_msg('<a href="http://198.51.100.1/">www.bank.example.com</a>')
    assert score_builtin(data, parsed=parse_message(data)) == score_builtin(data)


def test_nesting_bomb_is_scored_quickly(parser_inputs: list[int]) -> None:
    """Only the top-level headers are parsed (and walked): none of the 3000 nested parts."""
    opening = "".join(f'--b{i}\r\nContent-Type: multipart/mixed; boundary="b{i + 1}"\r\n\r\n' for i in range(3000))
    data = msg(opening, content_type='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0"\r\n')
    assert score_builtin(data).score == 0.0
    head = data.partition(b"\r\n\r\n")[0]
    assert parser_inputs == [len(head) + 4]
