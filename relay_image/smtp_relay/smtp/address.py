"""Parsing of MAIL FROM / RCPT TO arguments (RFC 5321 4.1.2, RFC 6531 for UTF-8).

Stricter than aiosmtpd's use of the RFC 5322 header parser, which accepts `<a@b` or `<a b@c>` and
reports the null sender as "<>". A source route (`<@a,@b:user@c>`) is accepted and dropped, as
RFC 5321 4.1.1.3 asks; the percent hack and address literals are just addresses, so policy (never an
open relay) never depends on how a recipient is spelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_PATH_RE = re.compile(rf"<(?:{_ROUTE})?({_MAILBOX})>|<>")
_BARE_RE = re.compile(rf"({_MAILBOX})")
_PARAM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+)?")

MAX_PATH = 256
"""RFC 5321 4.5.3.1.3: the longest path, angle brackets included."""


class AddressError(ValueError):
    """The argument is not a valid path; the message is the reply text."""


@dataclass(frozen=True)
class Path:
    address: str
    """The mailbox without brackets or source route; "" for the null reverse-path."""
    params: dict[str, str | bool]
    """ESMTP parameters, keys upper-cased; a keyword without value is True."""


def parse_path(arg: str, *, keyword: str, allow_null: bool) -> Path:
    """Parse `FROM:<path> params` (keyword "FROM:") or `TO:<path> params` (keyword "TO:")."""
    if arg[: len(keyword)].upper() != keyword:
        raise AddressError(f"Syntax: {'MAIL FROM' if keyword == 'FROM:' else 'RCPT TO'}:<address>")
    rest = arg[len(keyword) :].lstrip(" ")
    match = _PATH_RE.match(rest) if rest.startswith("<") else _BARE_RE.match(rest)
    if match is None or (rest[match.end() : match.end() + 1] not in ("", " ")):
        raise AddressError("Bad address syntax")
    if match.end() > MAX_PATH:
        raise AddressError("Address too long")
    address = match.group(1) or ""
    if not address and not allow_null:
        raise AddressError("Null address not allowed here")
    params: dict[str, str | bool] = {}
    for word in rest[match.end() :].split():
        if not _PARAM_RE.fullmatch(word):
            raise AddressError(f"Bad parameter {word!r}")
        key, eq, value = word.partition("=")
        params[key.upper()] = value if eq else True
    return Path(address=address, params=params)
