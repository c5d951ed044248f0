"""Headers the relay adds: spam tags (X-Spam-*) and Authentication-Results (RFC 8601), prepended safely.

`policy_headers` composes them from the policy's findings at end of DATA; the policy engine is
handed it as its `HeaderComposer`, so policy never imports cleanup. Pure (one log line aside).
Values partly come from outside (rspamd symbol names, envelope addresses), so nothing is pasted
into the message unchecked: names must be RFC 5322 field names, a value with CR, LF or NUL is refused
(`HeaderInjectionError`) instead of being cleaned up, since any repair would still let the peer
choose header content, and long values are folded at whitespace (or after commas) within 78/998
characters per line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Final

from smtp_relay.policy.verdict import SpamReport

log = logging.getLogger(__name__)

SPF_RESULTS: Final = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror", "policy"})
"""RFC 8601 2.7.2 result values of the spf method."""
SOFT_LIMIT: Final = 78
HARD_LIMIT: Final = 998

_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_SYMBOL_JUNK = re.compile(r"[^A-Za-z0-9_.+-]")
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_MAILBOX = re.compile(rf"^{_DOT_ATOM}@{_DOT_ATOM}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class HeaderInjectionError(ValueError):
    """A header name or value that would change the message's structure."""


def spam_headers(
    report: SpamReport, *, threshold: float, hostname: str, auth_results: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """X-Spam-Flag (only above the threshold), X-Spam-Score, X-Spam-Status and Authentication-Results.

    `auth_results` are RFC 8601 resinfo strings such as ``spf_resinfo("pass", "a@example.com")``.
    """
    spam = report.score > threshold
    tests = ",".join(sorted({_SYMBOL_JUNK.sub("_", s) for s in report.symbols if s})) or "none"
    headers: list[tuple[str, str]] = []
    if spam:
        headers.append(("X-Spam-Flag", "YES"))
    headers += [
        ("X-Spam-Score", f"{report.score:.1f}"),
        (
            "X-Spam-Status",
            f"{'Yes' if spam else 'No'}, score={report.score:.1f} required={threshold:.1f} "
            f"tests={tests} engine={_SYMBOL_JUNK.sub('_', report.engine)}",
        ),
        ("Authentication-Results", authentication_results(hostname, resinfo=auth_results)),
    ]
    return headers


def policy_headers(
    *,
    hostname: str,
    threshold: float,
    report: SpamReport | None,
    spf_result: str | None,
    mail_from: str,
    helo: str,
    tags: Sequence[str],
) -> list[tuple[str, str]]:
    """The headers of an accepted message: X-Spam-* from the spam report, Authentication-Results from SPF.

    `tags` are the policy's own symbols (SPF_FAIL, DNSBL_<zone>): they join the report's symbols and
    set X-Spam-Flag whatever the score, since the recipient's filter keys on the flag. Without a
    report (spam engine off or failed) only the flag and Authentication-Results are added, if there
    is anything to say. A value that would inject a header drops them all (logged), never the message.
    """
    resinfo = [spf_resinfo(spf_result, mail_from, helo=helo)] if spf_result is not None else []
    try:
        if report is None:
            if not tags and not resinfo:
                return []
            flag = [("X-Spam-Flag", "YES")] if tags else []
            return [*flag, ("Authentication-Results", authentication_results(hostname, resinfo=resinfo))]
        report = dataclasses.replace(report, symbols=tuple(dict.fromkeys((*report.symbols, *tags))))
        headers = spam_headers(report, threshold=threshold, hostname=hostname, auth_results=resinfo)
    except HeaderInjectionError as exc:
        log.warning("policy headers not added: %s", exc)
        return []
    if tags and not any(name == "X-Spam-Flag" for name, _ in headers):
        headers = [("X-Spam-Flag", "YES")] + [
            (name, value.replace("No,", "Yes,", 1) if name == "X-Spam-Status" else value) for name, value in headers
        ]
    return headers


def spf_resinfo(result: str, mail_from: str, *, helo: str | None = None) -> str:
    """``spf=<result> smtp.mailfrom=<sender>`` (or ``smtp.helo=`` for the null sender), per RFC 8601.

    A sender that is not a plain dot-atom address is given as its domain, which the RFC allows and
    which needs no quoting.
    """
    result = result.lower()
    if result not in SPF_RESULTS:
        raise ValueError(f"not an SPF result: {result!r}")
    if not mail_from:
        if helo and _HOSTNAME.match(helo):
            return f"spf={result} smtp.helo={helo}"
        return f"spf={result}"
    if _MAILBOX.match(mail_from):
        return f"spf={result} smtp.mailfrom={mail_from}"
    domain = mail_from.rpartition("@")[2]
    if _HOSTNAME.match(domain):
        return f"spf={result} smtp.mailfrom={domain}"
    return f"spf={result}"


def authentication_results(hostname: str, spf: tuple[str, str] | None = None, *, resinfo: Sequence[str] = ()) -> str:
    """The Authentication-Results value: ``authserv-id; resinfo; ...`` or ``authserv-id; none``.

    `spf` is (result, smtp.mailfrom); `resinfo` adds ready-made method results (each checked for
    injection here, as the header is assembled from them verbatim).
    """
    if not _HOSTNAME.match(hostname):
        raise HeaderInjectionError(f"not a host name usable as authserv-id: {hostname!r}")
    parts = [spf_resinfo(*spf)] if spf is not None else []
    for item in resinfo:
        if _FORBIDDEN.search(item) or ";" in item or not item.strip():
            raise HeaderInjectionError(f"invalid resinfo: {item!r}")
        parts.append(item.strip())
    return "; ".join([hostname, *(parts or ["none"])])


def fold(name: str, value: str) -> str:
    """``Name: value`` folded into CRLF-joined lines, breaking before whitespace (or after a comma)."""
    if not _FIELD_NAME.match(name):
        raise HeaderInjectionError(f"invalid header name: {name!r}")
    if _FORBIDDEN.search(value):
        raise HeaderInjectionError(f"header {name} value contains CR, LF or NUL")
    if not value.isascii():
        raise HeaderInjectionError(f"header {name} value is not ASCII")
    text = f"{name}: {value.strip()}"
    if len(text) <= SOFT_LIMIT:  # most values: nothing to fold
        return text.rstrip(" \t")
    words = _split_words(text)
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + len(word) > SOFT_LIMIT:
            lines.append(current)
            current = word if word[0] in " \t" else f" {word}"
        else:
            current += word
    lines.append(current)
    if any(len(line) > HARD_LIMIT for line in lines):
        raise HeaderInjectionError(f"header {name} has a word longer than {HARD_LIMIT} characters")
    return "\r\n".join(lines)


def _split_words(text: str) -> list[str]:
    """Pieces that may start a continuation line: each begins with its whitespace, or follows a comma."""
    pieces = re.findall(r"[ \t]*[^ \t]+", text)
    out: list[str] = []
    for piece in pieces:
        if len(piece) > SOFT_LIMIT and "," in piece:
            sub = re.findall(r"[^,]*,|[^,]+$", piece)
            out += [s for s in sub if s]
        else:
            out.append(piece)
    return out


def prepend_headers(data: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """The message with `headers` in front, in the given order, folded; refuses injection.

    Lines end in CRLF, unless the message itself uses bare LF line ends (then LF, so the header block
    stays consistent).
    """
    if not headers:
        return data
    newline = "\r\n"
    first_lf = data.find(b"\n")
    if first_lf != -1 and (first_lf == 0 or data[first_lf - 1 : first_lf] != b"\r"):
        newline = "\n"
    block = "".join(fold(name, value).replace("\r\n", newline) + newline for name, value in headers)
    return block.encode("ascii") + data
