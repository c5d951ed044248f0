"""A DMARC policy record parser (RFC 7489 6.3, 6.4), strict enough to tell a team what to fix.

Libraries looked at first: `checkdmarc` parses well but brings an HTTP stack, a PSL downloader and its
own DNS layer (httpx, requests, pyleri, publicsuffixlist...) for what is one record of tags; `dmarc`
(pydmarc 1.2) is small, but accepts any pct, does not check that rua/ruf are mailto URIs, lower-cases
the report addresses and ships no type hints, and a new dependency would serve one record. So this is a
small tag parser: the tag-list grammar is simple, and every error is a sentence naming the tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Disposition = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]

_DISPOSITIONS = ("none", "quarantine", "reject")
_TAG = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*)$", re.DOTALL)
_SIZE = re.compile(r"^[0-9]+[kmgt]?$", re.IGNORECASE)
_ADDR = re.compile(r"^[^@\s,;!]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_FO = frozenset("01ds")
_RF = frozenset({"afrf", "iodef"})


class DmarcError(ValueError):
    """A record that is not a valid DMARC policy; the message says which tag and why."""


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed policy record, defaults filled in as RFC 7489 6.3 gives them."""

    p: Disposition
    sp: Disposition
    """Policy for subdomains; p's when absent."""
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    """Aggregate report addresses (the mailto: removed, any !size limit kept off)."""
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = 86400


def is_dmarc(text: str) -> bool:
    """Whether a TXT record claims to be DMARC (so a wrong one is reported, not ignored)."""
    return re.match(r"^\s*v\s*=\s*DMARC1\s*(;|$)", text) is not None


def parse_dmarc(text: str) -> DmarcRecord:
    """Parse one TXT value; DmarcError with a specific message when it is not a valid policy record."""
    tags = _tags(text)
    if not tags or tags[0][0] != "v":
        raise DmarcError("the record must start with v=DMARC1")
    if tags[0][1] != "DMARC1":
        raise DmarcError(f"v={tags[0][1]} is not v=DMARC1 (the version is case-sensitive)")
    if len(tags) < 2 or tags[1][0] != "p":
        found = " (it appears later)" if any(name == "p" for name, _ in tags) else ""
        raise DmarcError(f"p= must follow v=DMARC1 (RFC 7489 6.3){found}")
    values: dict[str, str] = {}
    for name, value in tags:
        if name in values:
            raise DmarcError(f"{name}= appears twice")
        values[name] = value
    p = _disposition("p", values["p"])
    return DmarcRecord(
        p=p,
        sp=_disposition("sp", values["sp"]) if "sp" in values else p,
        adkim=_alignment("adkim", values.get("adkim", "r")),
        aspf=_alignment("aspf", values.get("aspf", "r")),
        pct=_pct(values.get("pct", "100")),
        rua=_uris("rua", values["rua"]) if "rua" in values else (),
        ruf=_uris("ruf", values["ruf"]) if "ruf" in values else (),
        fo=_fo(values.get("fo", "0")),
        rf=_rf(values.get("rf", "afrf")),
        ri=_ri(values.get("ri", "86400")),
    )


def _tags(text: str) -> list[tuple[str, str]]:
    """tag=value pairs in order; tag names lower case (ABNF literals are case-insensitive), values
    stripped. A trailing `;` is allowed, an empty tag between two is not."""
    parts = text.strip().split(";")
    if parts and not parts[-1].strip():
        parts.pop()
    tags = []
    for part in parts:
        match = _TAG.match(part.strip())
        if match is None:
            stripped = part.strip()
            raise DmarcError(f"{stripped!r} is not a tag=value pair" if stripped else "an empty tag between two ';'")
        tags.append((match[1].lower(), match[2].strip()))
    return tags


def _disposition(tag: str, value: str) -> Disposition:
    if value.lower() not in _DISPOSITIONS:
        raise DmarcError(f"{tag}={value} is not one of none, quarantine, reject")
    return cast(Disposition, value.lower())


def _alignment(tag: str, value: str) -> Alignment:
    if value.lower() not in ("r", "s"):
        raise DmarcError(f"{tag}={value} must be r (relaxed) or s (strict)")
    return cast(Alignment, value.lower())


def _pct(value: str) -> int:
    if not value.isdigit() or int(value) > 100:
        raise DmarcError(f"pct={value} must be a whole number from 0 to 100")
    return int(value)


def _ri(value: str) -> int:
    if not value.isdigit() or int(value) > 0xFFFFFFFF:
        raise DmarcError(f"ri={value} must be a number of seconds")
    return int(value)


def _uris(tag: str, value: str) -> tuple[str, ...]:
    """A comma-separated list of mailto: URIs, each optionally with a !size limit (RFC 7489 6.4)."""
    addresses = []
    for item in value.split(","):
        uri = item.strip()
        if not uri.lower().startswith("mailto:"):
            raise DmarcError(f"{tag}: {uri or 'an empty entry'!r} is not a mailto: URI")
        address, bang, size = uri[len("mailto:") :].partition("!")
        if bang and not _SIZE.match(size):
            raise DmarcError(f"{tag}: {uri!r} has a bad size limit (!<number>[k|m|g|t])")
        if not _ADDR.match(address):
            raise DmarcError(f"{tag}: {uri!r} is not a mailto: URI with an email address")
        addresses.append(address)
    return tuple(addresses)


def _fo(value: str) -> str:
    options = [option.strip() for option in value.split(":")]
    if not all(option in _FO for option in options):
        raise DmarcError(f"fo={value} must be 0, 1, d or s, separated by ':'")
    return ":".join(options)


def _rf(value: str) -> str:
    formats = [item.strip().lower() for item in value.split(":")]
    if not all(item in _RF for item in formats):
        raise DmarcError(f"rf={value} must be afrf or iodef")
    return ":".join(formats)
