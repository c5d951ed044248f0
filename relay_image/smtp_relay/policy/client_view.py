"""What a mail client may make of a MIME part: every file name it might show, every body it might decode.

Pure (no I/O). The attachment check must see what the recipient's client sees, and clients are
forgiving: they decode RFC 2231 continuations and RFC 2047 encoded words in file names (the latter
against the RFC), read names from the raw header text when the parsed header disagrees, hide
invisible characters and trailing dots, and decode base64 with junk or early padding in it. So the
names and bodies here are the union of the strict and the lenient readings.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.utils
import re
import urllib.parse
from collections.abc import Iterator
from email.message import Message

_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\x00-\x1f]")
_NAME_PARAM = re.compile(
    r"""(?<![\w-])(?:file)?name\s*(\*\s*\d+)?\s*(\*)?\s*=\s*("(?:[^"\\]|\\.)*"?|[^;\s]*)""", re.IGNORECASE
)
_RAW_NAME_HEADER = re.compile(
    rb"^(?:content-type|content-disposition)[ \t]*:(?:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
_STRICT_B64 = re.compile(r"[A-Za-z0-9+/\s]*(?:={1,2}\s*)?")


# --- file names --------------------------------------------------------------------------------


def part_names(part: Message) -> list[str]:
    """Every file name a client might show for this part: parsed, raw, decoded and undecoded forms."""
    names: list[str] = []
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        try:
            value: object = part.get_param(param, header=header)
        except Exception:
            continue
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        if isinstance(value, str) and value:
            names.append(value)
    for key, raw in part.raw_items():
        if key.lower() in ("content-type", "content-disposition"):
            names.extend(_names_from_header(str(raw)))
    out: list[str] = []
    for name in names:
        for variant in (name, _decode_words(name)):
            if variant and variant not in out:
                out.append(variant)
    return out


def _names_from_header(raw: str) -> list[str]:
    """File names from a raw Content-Type/Content-Disposition value, including RFC 2231 continuations."""
    text = re.sub(r"\r?\n[ \t]", " ", raw)
    plain: list[str] = []
    continued: dict[bool, dict[int, tuple[str, bool]]] = {}
    for match in _NAME_PARAM.finditer(text):
        section, extended, value = match.group(1), bool(match.group(2)), match.group(3)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:].removesuffix('"'))
        is_filename = match.group(0).lower().lstrip().startswith("file")
        if section is not None:
            index = int(re.sub(r"\D", "", section) or 0)
            continued.setdefault(is_filename, {})[index] = (value, extended)
        elif extended:
            plain.append(_rfc2231_value(value, first=True))
        else:
            plain.append(value)
    for pieces in continued.values():
        joined = "".join(
            _rfc2231_value(value, first=index == 0) if extended else value
            for index, (value, extended) in sorted(pieces.items())
        )
        plain.append(joined)
    return [name for name in plain if name]


def _rfc2231_value(value: str, *, first: bool) -> str:
    """Decode charset'lang'percent-encoded (first section) or percent-encoded (later sections)."""
    charset = "utf-8"
    if first and value.count("'") >= 2:
        charset, _, value = value.split("'", 2)
    try:
        return urllib.parse.unquote(value, encoding=charset or "utf-8", errors="replace")
    except LookupError:
        return urllib.parse.unquote(value, encoding="latin-1")


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words (used by some clients inside file name parameters, against the RFC)."""
    if "=?" not in value:
        return value
    try:
        pieces = email.header.decode_header(value)
    except Exception:
        return value
    out = []
    for piece, charset in pieces:
        if isinstance(piece, bytes):
            try:
                out.append(piece.decode(charset or "latin-1", errors="replace"))
            except LookupError:
                out.append(piece.decode("latin-1"))
        else:
            out.append(piece)
    return "".join(out)


def raw_names(data: bytes) -> Iterator[str]:
    for match in _RAW_NAME_HEADER.finditer(data):
        header = match.group(0).decode("latin-1")
        for name in _names_from_header(header.partition(":")[2]):
            yield name
            yield _decode_words(name)


def extension_of(name: str) -> tuple[str, str]:
    """(last extension, the extension before it) as Windows sees them: case, trailing dots, spaces ignored."""
    parts = extensions_of(name)
    if not parts:
        return "", ""
    return parts[-1], (parts[-2] if len(parts) > 1 else "")


def extensions_of(name: str) -> list[str]:
    """Every extension of the file's base name, last one last ("a.exe.gz" → ["exe", "gz"]), as Windows sees them."""
    base = _INVISIBLE.sub("", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = base.split(":", 1)[0].rstrip(" .\t").lower()
    return [part.strip() for part in base.split(".")[1:]]


# --- bodies ------------------------------------------------------------------------------------


def decoded_bodies(part: Message) -> list[bytes]:
    """The decoded body as the standard library sees it, plus a lenient base64 decoding if that differs."""
    decoded = part.get_payload(decode=True)
    out: list[bytes] = [decoded] if isinstance(decoded, bytes) else []
    cte = str(part.get("content-transfer-encoding", "")).lower()
    raw = part.get_payload(decode=False)
    if "base64" in cte and isinstance(raw, str) and not _STRICT_B64.fullmatch(raw):
        lenient = _lenient_b64(raw.encode("ascii", "ignore"))
        if lenient and lenient not in out:
            out.append(lenient)
    return out


def _lenient_b64(raw: bytes) -> bytes:
    """Decode base64 the way forgiving clients do: skip junk, restart after padding, ignore a short tail."""
    out = bytearray()
    for chunk in re.split(rb"=+", raw):
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", chunk)
        clean = clean[: len(clean) - len(clean) % 4] + _pad(clean)
        try:
            out += base64.b64decode(clean)
        except (binascii.Error, ValueError):
            continue
    return bytes(out)


def _pad(clean: bytes) -> bytes:
    tail = clean[len(clean) - len(clean) % 4 :]
    if len(tail) < 2:
        return b""
    return tail + b"=" * (4 - len(tail))
