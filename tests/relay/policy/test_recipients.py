"""Recipient syntax (RFC 5321 Mailbox) and the domain verdict at RCPT, with plain values."""

from __future__ import annotations

import pytest

from smtp_relay.policy.recipients import recipient_domain_verdict, recipient_syntax_error, recipient_syntax_verdict
from smtp_relay.policy.verdict import Action


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com",
        "bob.smith+tag@sub.example.com",
        '"bob smith"@example.com',
        '"quoted\\"quote"@example.com',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "Postmaster",
        "@relay.example,@other.example:bob@example.com",
        "<bob@example.com>",
        "jürgen@bücher.example",
        "x" * 64 + "@example.com",
    ],
)
def test_valid_recipients(address: str) -> None:
    assert recipient_syntax_error(address) is None
    assert recipient_syntax_verdict(address) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "empty address"),
        ("bob", "no domain"),
        ("@example.com", "empty local part"),
        ("bob@", "empty domain"),
        ("bob..smith@example.com", "invalid local part"),
        (".bob@example.com", "invalid local part"),
        ("bob smith@example.com", "invalid local part"),
        ("bob@exa mple.com", "invalid domain"),
        ("bob@-example.com", "invalid domain"),
        ("bob@example..com", "invalid domain"),
        ("bob@[192.0.2.300]", "invalid address literal"),
        ("x" * 65 + "@example.com", "local part longer than 64 octets"),
        ("bob@" + "a" * 64 + ".com", "invalid domain"),
        ("bob@" + ".".join(["abcdefghi"] * 30), "address longer than 254 octets"),
    ],
)
def test_invalid_recipients_get_501_with_the_reason(address: str, why: str) -> None:
    error = recipient_syntax_error(address)
    assert error is not None and error.startswith(why)
    verdict = recipient_syntax_verdict(address)
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.REJECT, 501, "5.1.3")
    assert verdict.text == f"Bad recipient address syntax: {error}"


def test_non_ascii_needs_smtputf8() -> None:
    assert recipient_syntax_error("jürgen@example.com", smtputf8=False) == "invalid local part"
    assert recipient_syntax_error("bob@bücher.example", smtputf8=False) == "invalid domain"


def test_a_domain_without_mail_is_550_at_rcpt_and_unknown_is_no_opinion() -> None:
    verdict = recipient_domain_verdict("nowhere.test", False)
    assert verdict is not None
    assert verdict.reply == (
        "550 5.1.2 Recipient address rejected: domain nowhere.test does not accept mail (no MX or address record)"
    )
    assert recipient_domain_verdict("nowhere.test", None) is None
    assert recipient_domain_verdict("mail.test", True) is None
