"""Delivery status notifications (bounces) as RFC 3464 / RFC 3462 `multipart/report` messages.

Pure: the bouncer (`queue.bouncer`) hands in what it knows and commits the bytes through the
spool, so a DSN is routed, retried and made durable like any other message. The output uses CRLF
line endings because it goes straight onto the wire, and everything but the returned headers is
7-bit ASCII.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from email.utils import formatdate

from smtp_relay.model.envelope import Envelope, Outcome, OutcomeKind

EXPIRED_STATUS = "4.4.7"
"""Status of a recipient that was still failing temporarily when the message reached maxAge."""

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]{1,900}>)", re.IGNORECASE | re.MULTILINE)
_BY_CODE = {
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    550: "5.1.1", 551: "5.1.6", 552: "5.2.2", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}  # fmt: skip
_MAX_TEXT = 900


def status_of(outcome: Outcome) -> str:
    """The RFC 3463 status of a failed recipient: the reply's own enhanced code when it gave one."""
    if outcome.kind is OutcomeKind.TEMPORARY:
        return EXPIRED_STATUS
    match = _ENHANCED.match(outcome.message)
    if match and match.group(1) == "5":
        return ".".join(match.groups())
    if 500 <= outcome.code <= 599:
        return _BY_CODE.get(outcome.code, "5.0.0")
    return "5.0.0"


def _ascii_line(text: str) -> str:
    """One line of printable US-ASCII: DSN fields must be ASCII and must not break the header syntax."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "replace").decode("ascii")
    return flat[:_MAX_TEXT]


def _address_field(address: str) -> str:
    """`rfc822; addr`, or RFC 6533 `utf-8; addr` with \\x{HEX} escapes for an internationalized address."""
    if address.isascii():
        return f"rfc822; {_ascii_line(address)}"
    escaped = "".join(ch if " " < ch <= "~" and ch not in "\\+=" else f"\\x{{{ord(ch):X}}}" for ch in address)
    return f"utf-8; {escaped[:_MAX_TEXT]}"


def _crlf(data: bytes) -> bytes:
    """Normalize any mix of CRLF, bare LF and bare CR to CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _diagnostic(outcome: Outcome) -> str:
    text = _ascii_line(outcome.message)
    if outcome.code:
        reply = text if text.startswith(str(outcome.code)) else f"{outcome.code} {text}".rstrip()
        return f"smtp; {reply}"
    return f"X-Relayfleet; {text or 'delivery failed'}"


def _human(failures: Mapping[str, Outcome], reporting_mta: str, reason: str) -> str:
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It is attached below (headers only). This is a permanent error;",
        "the recipients listed below will not receive it.",
        "",
    ]
    if reason:
        lines += [_ascii_line(reason), ""]
    for recipient, outcome in failures.items():
        where = f"host {_ascii_line(outcome.remote)} said: " if outcome.remote else ""
        what = _ascii_line(outcome.message) or "delivery failed"
        code = f"{outcome.code} " if outcome.code and not what.startswith(str(outcome.code)) else ""
        lines.append(f"<{_ascii_line(recipient)}>: {where}{code}{what}")
    return "\r\n".join(lines) + "\r\n"


def build_dsn(
    original: Envelope,
    original_headers: bytes,
    failures: Mapping[str, Outcome],
    *,
    reporting_mta: str,
    queue_id: str,
    now: float | None = None,
    reason: str = "",
) -> bytes:
    """Build the bounce for one failed delivery attempt of `original`, addressed to its sender.

    A failure whose kind is TEMPORARY means the message expired while that recipient was still
    deferred: it is reported with status 4.4.7 and its last temporary reply as the diagnostic.
    `reason` is an optional sentence for the human-readable part (e.g. why the message expired).
    """
    if not failures:
        raise ValueError("a DSN needs at least one failed recipient")
    when = time.time() if now is None else now
    date = formatdate(when, usegmt=True)
    headers = _crlf(original_headers).rstrip(b"\r\n")
    headers = headers + b"\r\n" if headers else b""

    per_message = [f"Reporting-MTA: dns; {_ascii_line(reporting_mta)}", f"X-Relayfleet-Queue-ID: {queue_id}"]
    if original.received_at > 0:
        per_message.append(f"Arrival-Date: {formatdate(original.received_at, usegmt=True)}")
    blocks = ["\r\n".join(per_message)]
    for recipient, outcome in failures.items():
        fields = [
            f"Final-Recipient: {_address_field(recipient)}",
            "Action: failed",
            f"Status: {status_of(outcome)}",
        ]
        if outcome.remote:
            host = outcome.remote.rsplit(":", 1)[0] if outcome.remote.count(":") == 1 else outcome.remote
            fields.append(f"Remote-MTA: dns; {_ascii_line(host)}")
        if outcome.message or outcome.code:
            fields.append(f"Diagnostic-Code: {_diagnostic(outcome)}")
        fields.append(f"Last-Attempt-Date: {date}")
        blocks.append("\r\n".join(fields))
    status_part = "\r\n\r\n".join(blocks) + "\r\n"
    human = _human(failures, reporting_mta, reason)

    seed = f"{queue_id}|{when}|{sorted(failures)}".encode()
    counter = 0
    while True:
        boundary = f"=_dsn_{hashlib.sha256(seed + str(counter).encode()).hexdigest()[:32]}"
        if boundary.encode() not in headers and boundary not in human and boundary not in status_part:
            break
        counter += 1

    sender = _ascii_line(original.mail_from) if original.mail_from.isascii() else original.mail_from
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{int(when)}.dsn@{reporting_mta}>",
    ]
    original_id = _MESSAGE_ID.search(headers)
    if original_id and original_id.group(1).isascii():
        ref = original_id.group(1).decode("ascii")
        top += [f"In-Reply-To: {ref}", f"References: {ref}"]
    top += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    text = (
        "\r\n".join(top) + "\r\n\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Description: Notification\r\n\r\n"
        f"{human}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n\r\n"
        f"{status_part}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "Content-Description: Undelivered Message Headers\r\n\r\n"
    )
    return text.encode("utf-8") + headers + f"\r\n--{boundary}--\r\n".encode()
