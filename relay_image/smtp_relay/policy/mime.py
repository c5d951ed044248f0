"""The shared MIME parser: one parse of the message that every content check walks.

Pure (no I/O). The stdlib's parser with the `compat32` policy, plus two shortcuts that keep the
relay's hot path cheap without changing the tree: a single-part message skips the line-by-line feed
parser (`_parse_single_part`), and a message with more multipart headers than any real mail has is
parsed as its top-level headers only (`too_complex`), so a nesting bomb cannot pin a CPU.

`structure_problem` names what makes a parsed message ambiguous: readers that disagree about where a
part ends or what a file is called let an attachment past one of them, so such a message is
malformed (the DATA stage refuses it with 554 5.6.0), not merely odd.
"""

from __future__ import annotations

import email
import email.utils
import itertools
import re
from email import policy as email_policy
from email.message import Message
from typing import Final

from smtp_relay.policy.client_view import extension_of

MAX_MULTIPARTS: Final = 100
"""Messages with more multipart or message/* headers are not walked but refused as malformed (nesting bombs)."""
MAX_NESTING_DEPTH: Final = 64
"""Parts nested deeper than this (multiparts and attached messages) make the message malformed."""

_MULTIPART_HEADER = re.compile(
    rb"^content-type[ \t]*:[ \t]*(?:\r?\n[ \t]+)?(?:multipart|message)/", re.IGNORECASE | re.MULTILINE
)
_AMBIGUOUS_HEADERS: Final = ("content-type", "content-disposition", "content-transfer-encoding")
_HEADER_FIELD = re.compile(r"[\041-\071\073-\176]+:")
"""A header field's first line, as the stdlib feed parser's headerRE has it (with a non-empty name)."""


def too_complex(data: bytes) -> bool:
    """More multipart or message/* headers than any real mail has.

    Parsing and walking them costs quadratic time, and the stdlib parser recurses once per attached
    message: 3,000 nested message/rfc822 parts raise RecursionError.
    """
    if data.count(b"/") <= MAX_MULTIPARTS:  # each such header has a "/": the usual case, at memchr speed
        return False
    lowered = data.lower()
    if lowered.count(b"multipart/") + lowered.count(b"message/") <= MAX_MULTIPARTS:
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


# --- ambiguity ------------------------------------------------------------------------------------


def structure_problem(message: Message) -> str | None:
    """Why the parsed message is ambiguous or too deep (see the module doc), or None. Walks without recursion."""
    stack: list[tuple[Message, int, tuple[str, ...]]] = [(message, 0, ())]
    while stack:
        part, depth, boundaries = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            return f"parts nested deeper than {MAX_NESTING_DEPTH} levels"
        problem = _part_problem(part, boundaries)
        if problem is not None:
            return problem
        payload = part.get_payload()
        if isinstance(payload, list):
            boundary = part.get_boundary() or ""
            stack.extend((child, depth + 1, (*boundaries, boundary)) for child in payload if isinstance(child, Message))
    return None


def _part_problem(part: Message, ancestors: tuple[str, ...]) -> str | None:
    raw = [(key.lower(), str(value)) for key, value in part.raw_items() if key.lower() in _AMBIGUOUS_HEADERS]
    if not raw:  # the usual single-part case: nothing to disagree about, and no parameter parse
        return None
    if len({key for key, _ in raw}) < len(raw):
        for header in _AMBIGUOUS_HEADERS:
            if len({" ".join(v.split()).lower() for key, v in raw if key == header}) > 1:
                return f"conflicting {header} headers"
    text = " ".join(value for _, value in raw).lower()
    content_type = str(part.get("content-type", "")).strip().lower()
    boundaries = _param_values(part, "boundary", "content-type") if "boundary" in text else []
    if len(set(boundaries)) > 1:
        return "conflicting boundary parameters"
    if content_type.startswith("multipart/") and not (boundaries and boundaries[0]):
        return "multipart part without a boundary"
    if boundaries:
        mine = boundaries[0]
        for outer in ancestors:
            if outer and (mine.startswith(outer) or outer.startswith(mine)):
                return "nested multipart reuses an enclosing boundary"
    if "name" not in text:
        return None
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        extensions = {extension_of(value)[0] for value in _param_values(part, param, header)}
        if len(extensions) > 1:  # an ASCII fallback spelling of the same name agrees on the extension
            return f"conflicting {param} parameters"
    return None


def _param_values(part: Message, param: str, header: str) -> list[str]:
    """Every value the header gives the parameter (plain, RFC 2231 and continued forms), unquoted and decoded."""
    try:
        params = part.get_params(header=header) or []
    except Exception:
        return []
    out = []
    for key, value in params[1:]:
        if key.strip().lower().split("*", 1)[0] != param:
            continue
        text = email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)
        out.append(email.utils.unquote(text.strip()))
    return out
