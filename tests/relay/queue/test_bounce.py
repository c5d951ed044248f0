"""RFC 3464 DSNs: structure, per-recipient status, CRLF, and what is never put on the wire."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message

import pytest

from smtp_relay.model.envelope import Envelope, Outcome
from smtp_relay.queue.bounce import build_dsn, status_of

HEADERS = b"From: alice@example.org\nTo: bob@example.net\nSubject: hi\nMessage-ID: <abc@example.org>\n\n"


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def _groups(raw: bytes) -> list[Message]:
    """The field groups of the message/delivery-status part: per-message first, then per recipient."""
    return _parts(_parts(_parse(raw))[1])


def _dsn(failures: dict[str, Outcome], reason: str = "") -> bytes:
    original = Envelope("alice@example.org", tuple(failures), received_at=1_700_000_000.0)
    return build_dsn(
        original,
        HEADERS,
        failures,
        reporting_mta="relay-0.example.com",
        queue_id="0006ABCDEF0123",
        now=1_700_000_600.0,
        reason=reason,
    )


def test_structure_of_a_permanent_failure() -> None:
    failure = Outcome.permanent(550, "5.1.1 <bob@example.net>: user unknown", "mx.example.net:25")
    raw = _dsn({"bob@example.net": failure})
    msg = _parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay-0.example.com>"
    assert msg["To"] == "<alice@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<abc@example.org>"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = _parts(msg)
    assert human.get_content_type() == "text/plain"
    assert "bob@example.net" in str(human.get_payload())
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = _parts(status)
    assert per_message["Reporting-MTA"] == "dns; relay-0.example.com"
    assert per_message["Arrival-Date"]
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: user unknown"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: hi\r\nMessage-ID: <abc@example.org>\r\n" in raw


def test_crlf_only_and_ascii_outside_returned_headers() -> None:
    raw = _dsn({"bob@example.net": Outcome.permanent(554, "rejected\nwith bare LF and caf\u00e9")})
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert re.search(rb"\r(?!\n)", raw) is None
    assert raw.endswith(b"--\r\n")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    per_rcpt = _groups(raw)[1]
    assert per_rcpt["Diagnostic-Code"] == "smtp; 554 rejected with bare LF and caf?"


def test_one_dsn_lists_every_failed_recipient() -> None:
    raw = _dsn(
        {
            "a@example.net": Outcome.permanent(550, "no such user"),
            "b@example.net": Outcome.permanent(552, "mailbox full"),
            "c@example.net": Outcome.permanent(0, "domain has no MX"),
        }
    )
    groups = _groups(raw)[1:]
    assert [(g["Final-Recipient"], g["Status"]) for g in groups] == [
        ("rfc822; a@example.net", "5.1.1"),
        ("rfc822; b@example.net", "5.2.2"),
        ("rfc822; c@example.net", "5.0.0"),
    ]
    assert groups[2]["Diagnostic-Code"] == "X-Relayfleet; domain has no MX"


def test_expiry_reports_4_4_7_with_the_last_reply_and_the_reason() -> None:
    raw = _dsn(
        {"bob@example.net": Outcome.temporary(451, "4.3.0 try later", "mx.example.net:25")},
        reason="The message stayed in the queue for longer than 5 days.",
    )
    per_rcpt = _groups(raw)[1]
    assert per_rcpt["Status"] == "4.4.7"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"
    assert "longer than 5 days" in str(_parts(_parse(raw))[0].get_payload())


def test_internationalized_recipient_uses_utf8_address_type() -> None:
    raw = _dsn({"j\u00f6rg@b\u00fccher.example": Outcome.permanent(550, "unknown")})
    assert b"Final-Recipient: utf-8; j\\x{F6}rg@b\\x{FC}cher.example\r\n" in raw


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.permanent(550, "5.7.1 relaying denied"), "5.7.1"),
        (Outcome.permanent(550, "4.2.2 odd but temporary-looking text"), "5.1.1"),
        (Outcome.permanent(553, "bad address"), "5.1.3"),
        (Outcome.permanent(599, "whatever"), "5.0.0"),
        (Outcome.temporary(421, "closing"), "4.4.7"),
    ],
)
def test_status_derivation(outcome: Outcome, status: str) -> None:
    assert status_of(outcome) == status


def test_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_dsn(Envelope("a@x.org", ()), b"", {}, reporting_mta="r", queue_id="q")
