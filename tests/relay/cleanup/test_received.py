"""The Received trace header (RFC 5321 4.4, RFC 3848 protocol names) and the hop count behind loop detection."""

from __future__ import annotations

import email.utils

import pytest

from smtp_relay.cleanup.received import count_received, received_header

NOW = 1_700_000_000.5


def _header(helo: str = "client.example", client_ip: str = "192.0.2.1", **flags: bool) -> str:
    options = {"esmtp": True, "tls": False, "auth": False, "utf8": False, **flags}
    return received_header(helo=helo, client_ip=client_ip, hostname="relay.test", now=NOW, **options).decode()


def test_layout_names_client_relay_and_date() -> None:
    date = email.utils.formatdate(int(NOW), localtime=True)
    assert _header() == (
        f"Received: from client.example ([192.0.2.1])\r\n\tby relay.test (relayfleet) with ESMTP;\r\n\t{date}\r\n"
    )


@pytest.mark.parametrize(
    ("flags", "protocol"),
    [
        ({"esmtp": False}, "SMTP"),
        ({}, "ESMTP"),
        ({"tls": True}, "ESMTPS"),
        ({"auth": True}, "ESMTPA"),
        ({"tls": True, "auth": True}, "ESMTPSA"),
        ({"utf8": True, "tls": True}, "UTF8SMTPS"),
        ({"utf8": True, "tls": True, "auth": True}, "UTF8SMTPSA"),
    ],
)
def test_protocol_names(flags: dict[str, bool], protocol: str) -> None:
    assert f" with {protocol};\r\n" in _header(**flags)


def test_ipv6_client_is_an_address_literal() -> None:
    assert _header(client_ip="2001:db8::1").startswith("Received: from client.example ([IPv6:2001:db8::1])\r\n")


@pytest.mark.parametrize(
    ("helo", "shown"),
    [
        ("evil)\r\nBcc: x@example.com", "evil???Bcc:?x@example.com"),  # cannot end the comment or the header
        ("a(b) c", "a?b??c"),
        ("", "unknown"),
        ("h" * 300, "h" * 255),
        ("bücher.example", "bücher.example"),
    ],
)
def test_helo_from_the_client_is_made_safe(helo: str, shown: str) -> None:
    assert _header(helo=helo).startswith(f"Received: from {shown} ([192.0.2.1])\r\n")


def test_count_received_reads_the_header_section_only() -> None:
    headers = b"Received: a\r\nreceived: b\r\nRECEIVED: c\r\nX-Received: no\r\nSubject: s\r\n"
    assert count_received(headers + b"\r\nReceived: in the body\r\n") == 3
    assert count_received(headers) == 3  # no body: all of it is headers
    assert count_received(b"Subject: s\r\n\r\nbody\r\n") == 0
