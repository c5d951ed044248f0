"""The builtin spam scorer: a few cheap, documented rules for relays without rspamd or SpamAssassin.

Pure (no I/O) and fast, since it runs on every message in the default chain: the message is parsed
with the `compat32` policy (no structured header parsing; the same tree as `mime.parse_message`), at
most `MAX_PARTS` text parts and `MAX_TEXT` characters of each are looked at. It does not pretend to
be a content filter: it catches the GTUBE test string, broken or bulk-mailer-style headers,
deceptive links and the SPF result.
Scores add up; `RULES` is the whole rule set (name, score, description), also for the README.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Final

from smtp_relay.policy.mime import parse_message
from smtp_relay.policy.verdict import SpamReport


@dataclass(frozen=True)
class Rule:
    """One builtin rule."""

    name: str
    score: float
    description: str


RULES: Final[dict[str, Rule]] = {
    rule.name: rule
    for rule in (
        Rule("GTUBE", 1000.0, "The GTUBE anti-spam test string (always spam)."),
        Rule("MISSING_DATE", 1.0, "No Date header (RFC 5322 requires one)."),
        Rule("MISSING_MID", 1.0, "No Message-ID header."),
        Rule("MISSING_FROM", 2.0, "No From header (RFC 5322 requires one)."),
        Rule("FROM_NO_DOMAIN", 2.0, "The From address has no @domain."),
        Rule("MISSING_SUBJECT", 0.5, "No Subject header."),
        Rule("SUBJ_ALL_CAPS", 1.5, "Subject of at least 8 letters, all upper case."),
        Rule("SUBJ_EXCLAIM", 1.0, "Subject with three or more exclamation marks."),
        Rule("BODY_EXCLAIM", 1.0, "Text with five or more runs of '!!!'."),
        Rule("URI_IP_HOST", 2.5, "A link whose host is an IP address (also decimal or hex encoded)."),
        Rule("URI_USERINFO", 2.0, "A link with user@ before the host (http://bank.example@evil.example/)."),
        Rule("URI_SHORTENER", 1.0, "A link through a URL shortener that hides its target."),
        Rule("HTML_LINK_MISMATCH", 3.0, "HTML anchor text shows one domain but the link goes to another."),
        Rule("HTML_ONLY", 1.0, "HTML body without a text/plain alternative."),
        Rule("SPF_FAIL", 3.0, "SPF result fail: the client is not allowed to send for the sender's domain."),
        Rule("SPF_SOFTFAIL", 1.5, "SPF result softfail."),
    )
}

GTUBE: Final = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
URL_SHORTENERS: Final = frozenset(
    {
        "bit.ly", "bitly.com", "tinyurl.com", "goo.gl", "t.co", "ow.ly", "is.gd", "v.gd", "buff.ly",
        "rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "rb.gy", "t.ly", "bl.ink", "s.id", "qrco.de",
        "tr.im", "soo.gd", "clck.ru", "shorte.st", "adf.ly", "lnkd.in", "db.tt", "u.to", "x.co",
    }
)  # fmt: skip
MAX_PARTS: Final = 20
MAX_TEXT: Final = 256 * 1024
MAX_URLS: Final = 1000
"""Links looked at per message; bulk mail does not need more to score."""

_URL = re.compile(r"""https?://([^/\s"'<>?#\\]+)""")
"""Matched against lower-cased text: a case-sensitive literal prefix lets `re` skip ahead quickly."""
_ANCHOR = re.compile(r"""(?is)<a\s[^>]*?href\s*=\s*["']?([^"'\s>]+)[^>]*>(.{0,500}?)</a\s*>""")
_TAG = re.compile(r"<[^>]*>")
_IPV4_LIKE = re.compile(r"(?:0x[0-9a-f]+|\d+)(?:\.(?:0x[0-9a-f]+|\d+)){0,3}")
# Anchor text that presents itself as an address: with a scheme or a www. prefix ("report.pdf" is not one).
_DOMAIN_TEXT = re.compile(r"(?i)^(?:https?://(?:[^/@\s]*@)?|(?=www\.))((?:[a-z0-9-]+\.)+[a-z]{2,63})\.?(?:[:/?#].*)?$")


def score_builtin(data: bytes, *, spf_result: str | None = None, parsed: Message | None = None) -> SpamReport:
    """Score a message with `RULES`; never raises (unparsable parts just do not score).

    `parsed` is `mime.parse_message(data)` when the caller already has it (the attachment check does).
    """
    hits: list[str] = []
    if GTUBE in data:
        hits.append("GTUBE")
    try:
        message = parsed if parsed is not None else parse_message(data)
        hits += _header_rules(message)
        hits += _body_rules(message, gtube_seen="GTUBE" in hits)
    except Exception:  # a malformed message scores what was found so far, never crashes the chain
        pass
    if spf_result is not None:
        result = spf_result.strip().lower()
        if result == "fail":
            hits.append("SPF_FAIL")
        elif result == "softfail":
            hits.append("SPF_SOFTFAIL")
    symbols = tuple(dict.fromkeys(hits))
    return SpamReport(score=float(round(sum(RULES[s].score for s in symbols), 2)), symbols=symbols, engine="builtin")


def _decoded_header(message: Message, name: str) -> str | None:
    raw = message.get(name)
    if raw is None:
        return None
    text = str(raw)
    if "=?" not in text:  # no RFC 2047 encoded word: decoding would give the text back, slowly
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


_ATOM_ADDRESS = (
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_SIMPLE_FROM = re.compile(rf"[ \t]*(?:[A-Za-z0-9 \t-]*<({_ATOM_ADDRESS})>|({_ATOM_ADDRESS}))[ \t]*")
"""`Name <local@domain>` or `local@domain` with plain atoms: the forms nearly all mail has."""


def from_address(sender: str) -> str:
    """The address of a From header, as email.utils.parseaddr finds it (which is slow), for plain forms."""
    simple = _SIMPLE_FROM.fullmatch(sender)
    if simple is not None:
        return simple.group(1) or simple.group(2)
    return email.utils.parseaddr(sender)[1]


def _header_rules(message: Message) -> Iterator[str]:
    if message.get("Date") is None:
        yield "MISSING_DATE"
    if message.get("Message-ID") is None:
        yield "MISSING_MID"
    sender = _decoded_header(message, "From")
    if sender is None:
        yield "MISSING_FROM"
    else:
        address = from_address(sender)
        local, at, domain = address.rpartition("@")
        if not at or not local or "." not in domain.strip("[]").strip("."):
            yield "FROM_NO_DOMAIN"
    subject = _decoded_header(message, "Subject")
    if subject is None:
        yield "MISSING_SUBJECT"
    else:
        letters = [c for c in subject if c.isalpha()]
        if len(letters) >= 8 and all(c.isupper() for c in letters):
            yield "SUBJ_ALL_CAPS"
        if subject.count("!") >= 3:
            yield "SUBJ_EXCLAIM"


def _text_parts(message: Message) -> Iterator[tuple[str, str]]:
    """(subtype, text) of the first text/plain and text/html parts that are not attachments."""
    seen = 0
    for part in message.walk():
        if seen >= MAX_PARTS:
            return
        if part.get_content_maintype() != "text" or part.get_content_subtype() not in ("plain", "html"):
            continue
        if "attachment" in str(part.get("Content-Disposition", "")).lower():
            continue
        seen += 1
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload[:MAX_TEXT].decode(charset, errors="replace")
        except LookupError:
            text = payload[:MAX_TEXT].decode("latin-1")
        yield part.get_content_subtype(), text


def _body_rules(message: Message, *, gtube_seen: bool) -> Iterator[str]:
    subtypes: set[str] = set()
    urls: list[str] = []
    exclaims = 0
    gtube = gtube_seen
    mismatch = False
    for subtype, text in _text_parts(message):
        subtypes.add(subtype)
        if not gtube and GTUBE.decode() in text:
            gtube = True
            yield "GTUBE"
        exclaims += text.count("!!!")
        if "://" in text:
            urls += _URL.findall(text.lower())
        if subtype == "html" and not mismatch:
            mismatch = _anchor_mismatch(text)
    if exclaims >= 5:
        yield "BODY_EXCLAIM"
    if "html" in subtypes and "plain" not in subtypes:
        yield "HTML_ONLY"
    if mismatch:
        yield "HTML_LINK_MISMATCH"
    hosts = {_split_netloc(netloc) for netloc in set(urls[:MAX_URLS])}
    if any(userinfo for userinfo, _ in hosts):
        yield "URI_USERINFO"
    if any(_is_ip_host(host) for _, host in hosts):
        yield "URI_IP_HOST"
    if any(host in URL_SHORTENERS or host.removeprefix("www.") in URL_SHORTENERS for _, host in hosts):
        yield "URI_SHORTENER"


def _split_netloc(netloc: str) -> tuple[bool, str]:
    """(has user@ part, host in lower case without port)."""
    userinfo, at, host = netloc.rpartition("@")
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return bool(at and userinfo), host.lower().rstrip(".")


def _is_ip_host(host: str) -> bool:
    if _IPV4_LIKE.fullmatch(host):
        return True  # dotted, decimal (http://3232235777/) or hex forms all reach an address
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _site(host: str) -> str:
    """The last two labels: a rough registrable domain (no public suffix list here)."""
    return ".".join(host.lower().rstrip(".").split(".")[-2:])


def _anchor_mismatch(html: str) -> bool:
    for href, inner in _ANCHOR.findall(html):
        shown = _TAG.sub("", inner).strip()
        shown_match = _DOMAIN_TEXT.match(shown)
        target = _URL.match(href.strip().lower())
        if shown_match is None or target is None:
            continue
        _, target_host = _split_netloc(target.group(1))
        shown_host = shown_match.group(1).lower()
        if _is_ip_host(target_host) or _site(target_host) != _site(shown_host):
            return True
    return False
