"""The shared MIME parser: one parse of the message that every content check walks.

Pure (no I/O). The stdlib's parser with the `compat32` policy, plus two shortcuts that keep the
relay's hot path cheap without changing the tree: a single-part message skips the line-by-line feed
parser (`_parse_single_part`), and a message with more multipart headers than any real mail has is
parsed as its top-level headers only (`too_complex`), so a nesting bomb cannot pin a CPU.
"""

from __future__ import annotations

import email
import itertools
import re
from email import policy as email_policy
from email.message import Message
from typing import Final

MAX_MULTIPARTS: Final = 100
"""Messages with more multipart headers are not walked but refused as malformed (nesting bombs)."""

_MULTIPART_HEADER = re.compile(rb"^content-type[ \t]*:[ \t]*(?:\r?\n[ \t]+)?multipart/", re.IGNORECASE | re.MULTILINE)
_HEADER_FIELD = re.compile(r"[\041-\071\073-\176]+:")
"""A header field's first line, as the stdlib feed parser's headerRE has it (with a non-empty name)."""


def too_complex(data: bytes) -> bool:
    """More multipart headers than any real mail has: parsing and walking them costs quadratic time."""
    if data.lower().count(b"multipart/") <= MAX_MULTIPARTS:  # the usual case, at memchr speed
        return False
    found = itertools.islice(_MULTIPART_HEADER.finditer(data), MAX_MULTIPARTS + 1)
    return sum(1 for _ in found) > MAX_MULTIPARTS


def parse_message(data: bytes) -> Message:
    """The MIME tree both content checks walk; parse once and pass it to both (`parsed=`).

    The `compat32` policy, not `default`: it keeps header values as raw strings (the attachment
    check decodes file names itself) and is about seven times faster, which matters on the relay's
    hot path. A message that is `too_complex` is parsed as its top-level headers only (the
    attachment check refuses it anyway), so thousands of nested multiparts cannot pin a CPU for seconds.
    """
    if too_complex(data):
        head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
        return email.message_from_bytes(head + b"\r\n\r\n", policy=email_policy.compat32)
    single = _parse_single_part(data)
    if single is not None:
        return single
    return email.message_from_bytes(data, policy=email_policy.compat32)


def _parse_single_part(data: bytes) -> Message | None:
    """The message as the full parse gives it, for one that is neither multipart nor message/*; else None.

    For a single part the stdlib's feed parser only splits the body into lines and joins them again,
    and reads the headers through the same line machinery: one Python call per line, most of the
    cost of checking a plain-text message. Here the header fields are split as the feed parser
    splits them (its `headerRE`, continuation lines, compat32's `header_source_parse`) and the body
    is attached as the one string it would make. Whatever is not plain (a first line that is a
    continuation or "From ", a line that is no header field, bare CR or LF, multipart or message/*)
    takes the full parse, so the two always agree (tests/relay/policy/test_fuzz.py checks it).
    """
    end = data.find(b"\r\n\r\n")
    if end <= 0:
        return None
    head = data[:end]
    if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
        return None
    message = Message(policy=email_policy.compat32)
    field: list[str] = []
    for raw in head.split(b"\r\n"):  # not str.splitlines(), which also splits at \x0b, \x0c, \x1c...
        line = raw.decode("ascii", "surrogateescape") + "\r\n"
        if line[0] in " \t":
            if not field:
                return None
            field.append(line)
            continue
        if field:
            message.set_raw(*email_policy.compat32.header_source_parse(field))
        if not _HEADER_FIELD.match(line) or line.startswith("From "):
            return None
        field = [line]
    if field:
        message.set_raw(*email_policy.compat32.header_source_parse(field))
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    message.set_payload(data[end + 4 :].decode("ascii", "surrogateescape"))
    return message
