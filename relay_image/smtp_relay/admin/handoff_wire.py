"""The hand-off's wire format: one queued message with its progress, from a draining relay to one that stays. Pure.

A draining pod's messages must outlive it without waiting for the upstream, so it gives each one to a pod that
stays (`POST /handoff` on that pod's admin port). The body is one line of JSON metadata, a newline, then the
message data as spooled (headers the relay added included). The metadata carries what the receiving relay needs
to go on as if the message had always been queued there: the envelope with the recipients still pending, the
original arrival time (so maxAge and bounce timing do not restart), the attempts, the next attempt and the last
error (so the retry schedule goes on), an id of origin (a retried hand-off is recognised as a duplicate), and the
data's size and SHA-256 (a truncated or corrupted body is refused, never queued).

Everything is validated strictly: a body this module refuses gets a 400 naming the problem, so a bug on either
side shows as a refused hand-off (the message stays with its sender) rather than as a wrong message queued.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from smtp_relay.model.envelope import Envelope, StoredMessage

CONTENT_TYPE = "application/x-relayfleet-handoff"
VERSION = 1
MAX_META_BYTES = 1024 * 1024
"""The metadata line: generous for thousands of recipients, small enough to refuse garbage early."""
HEADROOM_BYTES = 256 * 1024
"""Data may exceed spec.policy.maxMessageBytes by the headers the sending relay added (Received, policy, DKIM)."""
MAX_ERROR = 1000
"""The last error is kept to this many characters, as the spool's journal keeps it."""
MAX_RECIPIENTS = 10_000
MAX_ADDRESS = 998
MAX_PEERS = 64
CLOCK_SKEW = 300.0
"""An arrival time further in the future than this is refused (a wrong clock or a wrong field)."""

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "origin": str,
    "mail_from": str,
    "rcpt_tos": list,
    "received_at": (int, float),
    "attempts": int,
    "next_attempt": (int, float),
    "last_error": str,
    "size": int,
    "sha256": str,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "client_ip": str,
    "helo": str,
    "auth_user": (str, type(None)),
    "smtputf8": bool,
    "body_8bit": bool,
    "is_bounce": bool,
}


class HandoffError(ValueError):
    """A hand-off body that is refused (400); the text says which field and why."""


class HandoffTooLarge(HandoffError):
    """The message is larger than this relay accepts (413)."""


@dataclass(frozen=True)
class HandoffRecord:
    """One handed-off message as the receiving relay commits it (the envelope holds the pending recipients)."""

    origin: str
    """`<relay hostname>:<spool>/<queue id>` where it was queued before: the key of duplicate detection."""
    envelope: Envelope
    attempts: int
    next_attempt: float
    last_error: str


def pending_recipients(message: StoredMessage) -> list[str]:
    """The recipients not settled yet, in the envelope's order (then any others, sorted)."""
    ordered = [r for r in dict.fromkeys(message.envelope.rcpt_tos) if r in message.pending]
    return ordered + sorted(message.pending.difference(ordered))


def encode(message: StoredMessage, data: bytes, origin: str) -> bytes:
    """The body of `POST /handoff` for `message`: metadata line, newline, data."""
    env = message.envelope
    meta = {
        "v": VERSION,
        "origin": origin,
        "mail_from": env.mail_from,
        "rcpt_tos": pending_recipients(message),
        "client_ip": env.client_ip,
        "helo": env.helo,
        "auth_user": env.auth_user,
        "smtputf8": env.smtputf8,
        "body_8bit": env.body_8bit,
        "is_bounce": env.is_bounce,
        "received_at": env.received_at,
        "attempts": message.attempts,
        "next_attempt": message.next_attempt,
        "last_error": message.last_error[:MAX_ERROR],
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    line = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return line + b"\n" + data


def decode(body: bytes, max_data: int, now: float) -> tuple[HandoffRecord, bytes]:
    """Parse and check a `POST /handoff` body; HandoffError (HandoffTooLarge) says what is wrong."""
    end = body.find(b"\n", 0, MAX_META_BYTES + 1)
    if end < 0:
        raise HandoffError(f"the body must start with one line of JSON metadata (at most {MAX_META_BYTES} bytes)")
    try:
        meta = json.loads(body[:end])
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"the metadata line is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise HandoffError("the metadata must be a JSON object")
    _check_fields(meta)
    if meta["v"] != VERSION:
        raise HandoffError(f"v: unsupported hand-off version {meta['v']} (this relay speaks {VERSION})")
    data = body[end + 1 :]
    size = meta["size"]
    if size < 0 or size != len(data):
        raise HandoffError(f"size: the metadata declares {size} byte(s) of data but the body carries {len(data)}")
    if size > max_data:
        raise HandoffTooLarge(f"size: {size} bytes is more than this relay accepts ({max_data})")
    if hashlib.sha256(data).hexdigest() != str(meta["sha256"]).lower():
        raise HandoffError("sha256: the data does not match its checksum (corrupted or truncated)")
    return _record(meta, now), data


def origin_of(body: bytes) -> str:
    """The origin a hand-off body names ("" when it names none): the supervisor routes by it, unchecked."""
    end = body.find(b"\n", 0, MAX_META_BYTES + 1)
    try:
        meta = json.loads(body[:end]) if end >= 0 else None
    except (ValueError, UnicodeDecodeError):
        return ""
    origin = meta.get("origin") if isinstance(meta, dict) else None
    return origin if isinstance(origin, str) else ""


def _check_fields(meta: Mapping[str, Any]) -> None:
    unknown = sorted(set(meta) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise HandoffError(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(set(_REQUIRED) - set(meta))
    if missing:
        raise HandoffError(f"missing field(s): {', '.join(missing)}")
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in meta:
            continue
        value = meta[name]
        # bool is an int in Python: a true/false where a number belongs is refused too
        wrong_bool = isinstance(value, bool) and kind is not bool
        if wrong_bool or not isinstance(value, kind):
            raise HandoffError(f"{name}: wrong type {type(value).__name__}")


def _text(name: str, value: str, limit: int, *, empty: bool = True) -> str:
    if not empty and not value:
        raise HandoffError(f"{name}: must not be empty")
    if len(value) > limit:
        raise HandoffError(f"{name}: longer than {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise HandoffError(f"{name}: control characters are not allowed")
    return value


def _time(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise HandoffError(f"{name}: must be a finite, non-negative Unix time")
    return float(value)


def _record(meta: Mapping[str, Any], now: float) -> HandoffRecord:
    rcpts = meta["rcpt_tos"]
    if not rcpts:
        raise HandoffError("rcpt_tos: at least one pending recipient is needed")
    if len(rcpts) > MAX_RECIPIENTS:
        raise HandoffError(f"rcpt_tos: more than {MAX_RECIPIENTS} recipients")
    for i, rcpt in enumerate(rcpts):
        if not isinstance(rcpt, str):
            raise HandoffError(f"rcpt_tos[{i}]: wrong type {type(rcpt).__name__}")
        _text(f"rcpt_tos[{i}]", rcpt, MAX_ADDRESS, empty=False)
        if " " in rcpt:
            raise HandoffError(f"rcpt_tos[{i}]: spaces are not allowed in an address")
    if len(set(rcpts)) != len(rcpts):
        raise HandoffError("rcpt_tos: a recipient is listed twice")
    received_at = _time("received_at", meta["received_at"])
    if received_at <= 0:
        raise HandoffError("received_at: the original arrival time is required")
    if received_at > now + CLOCK_SKEW:
        raise HandoffError(f"received_at: {received_at:.0f} is in the future (now {now:.0f})")
    attempts = meta["attempts"]
    if not 0 <= attempts <= 1_000_000:
        raise HandoffError("attempts: must be between 0 and 1000000")
    auth_user = meta.get("auth_user")
    envelope = Envelope(
        mail_from=_text("mail_from", meta["mail_from"], MAX_ADDRESS),
        rcpt_tos=tuple(rcpts),
        client_ip=_text("client_ip", meta.get("client_ip", ""), 64),
        helo=_text("helo", meta.get("helo", ""), MAX_ADDRESS),
        auth_user=None if auth_user is None else _text("auth_user", auth_user, MAX_ADDRESS),
        smtputf8=bool(meta.get("smtputf8", False)),
        body_8bit=bool(meta.get("body_8bit", False)),
        received_at=received_at,
        is_bounce=bool(meta.get("is_bounce", False)),
    )
    return HandoffRecord(
        origin=_text("origin", meta["origin"], 512, empty=False),
        envelope=envelope,
        attempts=attempts,
        next_attempt=_time("next_attempt", meta["next_attempt"]),
        last_error=_text("last_error", meta["last_error"].replace("\r", " ").replace("\n", " "), MAX_ERROR),
    )


def parse_drain_body(raw: bytes) -> list[str] | None:
    """The peers of `POST /drain` (`{"peers": ["http://10.0.0.5:9025", ...]}`); None for an empty body (drain and
    deliver only, as before the hand-off existed). HandoffError says what is wrong."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"the drain body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HandoffError("the drain body must be a JSON object")
    unknown = sorted(set(body) - {"peers"})
    if unknown:
        raise HandoffError(f"unknown field(s): {', '.join(unknown)}")
    peers = body.get("peers", [])
    if not isinstance(peers, list) or len(peers) > MAX_PEERS:
        raise HandoffError(f"peers: must be a list of at most {MAX_PEERS} admin URLs")
    out: list[str] = []
    for i, peer in enumerate(peers):
        if not isinstance(peer, str):
            raise HandoffError(f"peers[{i}]: wrong type {type(peer).__name__}")
        parts = urlsplit(peer)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise HandoffError(f"peers[{i}]: {peer!r} is not an admin URL such as http://10.0.0.5:9025")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise HandoffError(f"peers[{i}]: {peer!r} must name only scheme, host and port")
        out.append(f"{parts.scheme}://{parts.netloc}")
    return list(dict.fromkeys(out))
