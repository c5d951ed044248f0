"""The Received trace header the relay prepends to every message, and the hop count that detects mail loops.

Pure. The HELO name comes from the client, so characters that could end the comment or the header
are replaced; the date is formatted once per second, since every message of that second shares it.
"""

from __future__ import annotations

import email.utils
import functools
import re

MAX_RECEIVED = 30
"""More Received headers than this means a mail loop (RFC 5321 6.3)."""

_RECEIVED_RE = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_UNSAFE_HELO = re.compile(r"[^\x21-\x27\x2a-\x7e\u0080-\U0010ffff]")


@functools.lru_cache(maxsize=4)
def _received_date(second: int) -> str:
    """RFC 5322 date of a Unix second, local time; cached because every message of a second shares it."""
    return email.utils.formatdate(second, localtime=True)


def received_header(
    *, helo: str, client_ip: str, hostname: str, esmtp: bool, tls: bool, auth: bool, utf8: bool, now: float
) -> bytes:
    """A RFC 5321 4.4 trace header; RFC 3848 / 6531 protocol names ("with ESMTPSA", "UTF8SMTPS", ...)."""
    proto = ("UTF8SMTP" if utf8 else "ESMTP" if esmtp else "SMTP") + ("S" if tls else "") + ("A" if auth else "")
    ip = client_ip if ":" not in client_ip else f"IPv6:{client_ip}"
    helo_clean = _UNSAFE_HELO.sub("?", helo)[:255] or "unknown"
    date = _received_date(int(now))
    text = f"Received: from {helo_clean} ([{ip}])\r\n\tby {hostname} (relayfleet) with {proto};\r\n\t{date}\r\n"
    return text.encode("utf-8", "surrogateescape")


def count_received(message: bytes) -> int:
    """Received headers in the header section (up to the first empty line)."""
    end = message.find(b"\r\n\r\n")
    headers = message if end < 0 else message[: end + 2]
    return len(_RECEIVED_RE.findall(headers))
