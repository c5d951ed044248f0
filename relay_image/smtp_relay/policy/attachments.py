"""Malware attachment inspection: blocked extensions, executables by magic bytes, Office macros, archive contents.

Pure (no I/O). The walk uses the shared MIME parser (`mime.parse_message`), but never trusts it alone: every part
is inspected inside its own guard, file names are gathered from the parsed headers *and* from the raw
header text (RFC 2231 continuations and RFC 2047 encoded words decoded here), base64 is also decoded
leniently, and when the MIME structure itself is broken (missing boundaries, ...) the raw message is
searched for attachment names as well. Whatever cannot be inspected but looks like an attachment is
reported as ``malformed``: a parser error must never let an attachment through. A message that readers
may disagree about (`mime.structure_problem`: duplicate boundaries or names, nesting) is ``structure``.

Archives (`archives`: zip, gzip, bzip2, xz, tar, 7z, rar) are bounded by depth, member count and
decompressed bytes; running out of that budget is itself a finding ("too large to inspect"), refused
or quarantined like any other. An inspection on the event loop (``inline``) gets a small budget and,
when it runs out, raises `NeedsWorker` so the DATA stage repeats it in its worker pool.

Legacy Office (OLE2) macro detection is a byte search for the UTF-16 names of the VBA storages and
streams (``_VBA_PROJECT``, ``Macros``, ``VBA``) after checking the OLE2 signature; it does not parse the
compound file's directory, so it may flag a document that merely contains those names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email import errors as email_errors
from email.message import Message
from typing import Final, Literal

from smtp_relay.config.policy_spec import AttachmentsSpec
from smtp_relay.policy.archive_formats import (
    ARCHIVE_EXTENSIONS,
    HEAD_BYTES,
    OLE2_MAGIC,
    ZIP_MAGICS,
    Budget,
    Exhausted,
    NeedsWorker,
    Unreadable,
    kind_of,
)
from smtp_relay.policy.archives import read_archive
from smtp_relay.policy.client_view import decoded_bodies, extensions_of, part_names, raw_names
from smtp_relay.policy.mime import MAX_MULTIPARTS, parse_message, structure_problem, too_complex

__all__ = ["AttachmentFinding", "NeedsWorker", "blocked_extensions", "inspect_attachments"]

Reason = Literal["extension", "executable", "macro", "archive", "malformed", "structure"]

ARCHIVE_MAX_DEPTH: Final = 3
"""Archives inside archives are opened up to this depth; deeper nesting is itself a finding."""
INLINE_ARCHIVE_BUDGET: Final = 256 * 1024
"""Bytes an inspection on the event loop may inflate before it moves to the worker pool (about 1 ms of zlib)."""
MAX_UUENCODE_SCAN: Final = 1024 * 1024
"""How much of each part is searched for uuencode "begin" lines."""

_MACHO_MAGICS: Final = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")
_LNK_MAGIC: Final = b"L\x00\x00\x00\x01\x14\x02\x00"
# UTF-16LE directory entry names of the VBA project in Word/Excel/PowerPoint binary documents.
_OLE2_VBA_MARKERS: Final = (
    "_VBA_PROJECT".encode("utf-16-le"),
    "Macros\x00".encode("utf-16-le"),
    "VBA\x00".encode("utf-16-le"),
)
_UUENCODE_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]+)\r?$", re.MULTILINE)
_STRUCTURE_DEFECTS: Final = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.MissingHeaderBodySeparatorDefect,
    email_errors.FirstHeaderLineIsContinuationDefect,
)


def blocked_extensions(spec: AttachmentsSpec) -> frozenset[str]:
    """The extensions refused, lower case (the spec's list; its default is the gateways' list)."""
    return _blocked(tuple(spec.block_extensions))


@functools.lru_cache(maxsize=64)
def _blocked(configured: tuple[str, ...]) -> frozenset[str]:
    return frozenset(ext.lower() for ext in configured)


@dataclass(frozen=True)
class AttachmentFinding:
    """Why a message is refused: the offending file (path inside archives joined by '/') and the rule."""

    filename: str
    reason: Reason
    detail: str


def inspect_attachments(
    data: bytes, spec: AttachmentsSpec, *, parsed: Message | None = None, inline: bool = False
) -> AttachmentFinding | None:
    """The first blocked attachment of the message, or None. Never raises (failure is a finding), except
    `NeedsWorker` when `inline` and the archives outgrow the event loop's budget.

    `parsed` is `parse_message(data)` when the caller already has it.
    """
    budget = Budget(INLINE_ARCHIVE_BUDGET, inline=True) if inline else Budget()
    try:
        if too_complex(data):
            return AttachmentFinding("", "structure", f"more than {MAX_MULTIPARTS} multipart or message parts")
        return _inspect(data, spec, parsed if parsed is not None else parse_message(data), budget)
    except NeedsWorker:
        raise
    except RecursionError:
        return AttachmentFinding("", "structure", "parts nested too deeply to inspect")
    except Exception as exc:  # a bug or a parser crash must not let the message through
        return AttachmentFinding("", "malformed", f"message could not be inspected ({type(exc).__name__})")


def _inspect(data: bytes, spec: AttachmentsSpec, message: Message, budget: Budget) -> AttachmentFinding | None:
    problem = structure_problem(message)
    if problem is not None:
        return AttachmentFinding("", "structure", problem)
    blocked = blocked_extensions(spec)
    broken = False
    for part in message.walk():
        if any(isinstance(d, _STRUCTURE_DEFECTS) for d in getattr(part, "defects", ())):
            broken = True
        finding = _inspect_part(part, spec, blocked, budget)
        if finding is not None:
            return finding
    if broken:
        # The structure is not what a mail client may see: look for attachment names in the raw text too.
        for name in raw_names(data):
            finding = _check_name(name, blocked)
            if finding is not None:
                return finding
    return None


def _inspect_part(
    part: Message, spec: AttachmentsSpec, blocked: frozenset[str], budget: Budget
) -> AttachmentFinding | None:
    if part.is_multipart():
        return None
    names: list[str] = []
    attachment_like = False
    try:
        names = part_names(part)
        attachment_like = bool(names) or _looks_like_attachment(part)
    except Exception:
        attachment_like = True
    label = names[0] if names else ""
    for name in names:
        finding = _check_name(name, blocked)
        if finding is not None:
            return finding
    try:
        bodies = decoded_bodies(part)
    except Exception as exc:
        if attachment_like:
            return AttachmentFinding(label, "malformed", f"attachment could not be decoded ({type(exc).__name__})")
        return None
    for payload in bodies:
        finding = _check_content(label, payload, spec, blocked, budget, depth=0, is_attachment=attachment_like)
        if finding is not None:
            return finding
        # uuencoded files inside a text body ("begin 644 name"), which Outlook still shows as attachments.
        scanned = payload[:MAX_UUENCODE_SCAN]
        for match in _UUENCODE_BEGIN.finditer(scanned) if b"begin" in scanned else ():  # memchr first
            finding = _check_name(match.group(1).decode("latin-1").strip(), blocked)
            if finding is not None:
                return finding
    return None


def _check_name(name: str, blocked: frozenset[str]) -> AttachmentFinding | None:
    """A blocked last extension, or one hidden behind archive suffixes ("evil.exe.gz", "evil.exe.zip")."""
    extensions = extensions_of(name)
    for index in range(len(extensions) - 1, -1, -1):
        ext = extensions[index]
        if ext in blocked:
            if index < len(extensions) - 1:  # behind archive suffixes: "evil.exe.gz"
                double = " (double extension ." + ".".join(extensions[index:]) + ")"
            else:  # "invoice.pdf.exe"
                double = f" (double extension .{extensions[index - 1]}.{ext})" if index > 0 else ""
            return AttachmentFinding(name, "extension", f"blocked extension .{ext}{double}")
        if ext not in ARCHIVE_EXTENSIONS:
            return None
    return None


def _looks_like_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition", "")).lower()
    maintype = part.get_content_maintype()
    return "attachment" in disposition or maintype not in ("text", "multipart", "message")


# --- content -----------------------------------------------------------------------------------


def _executable_kind(head: bytes, *, is_attachment: bool) -> str | None:
    """Name of the executable format the bytes start with, if any."""
    if head.startswith(b"MZ"):
        if len(head) >= 0x40:
            offset = int.from_bytes(head[0x3C:0x40], "little")
            if head[offset : offset + 4] == b"PE\x00\x00":
                return "Windows PE executable"
            if any(b < 0x09 for b in head[2:0x40]):
                return "DOS/Windows MZ executable"
        return None
    if head.startswith(b"\x7fELF"):
        return "ELF executable"
    if head[:4] in _MACHO_MAGICS:
        return "Mach-O executable"
    if head.startswith(b"\xca\xfe\xba\xbe"):
        return "Mach-O universal binary or Java class"
    if head.startswith(_LNK_MAGIC):
        return "Windows shortcut (.lnk)"
    if is_attachment and head.startswith(b"#!"):
        # Only for attachments: a text body that happens to start with "#!" is not a file anyone runs.
        return "script with #! interpreter line"
    return None


def _check_content(
    name: str,
    payload: bytes,
    spec: AttachmentsSpec,
    blocked: frozenset[str],
    budget: Budget,
    *,
    depth: int,
    is_attachment: bool,
    complete: bool = True,
) -> AttachmentFinding | None:
    """Executable magic, OLE2 macros, then (for a whole file, not a member's head) archive contents."""
    kind = _executable_kind(payload[:HEAD_BYTES], is_attachment=is_attachment)
    if kind is not None:
        return AttachmentFinding(name, "executable", kind)
    if payload.startswith(OLE2_MAGIC):
        if spec.block_macros and any(marker in payload for marker in _OLE2_VBA_MARKERS):
            return AttachmentFinding(name, "macro", "Office (OLE2) document with a VBA project")
        return None
    if not complete or not (is_attachment or kind_of(payload, whole=False)):
        return None  # a body shown as text is no archive, unless it starts like one: skip the trailer search
    return _check_archive(name, payload, spec, blocked, budget, depth=depth)


def _check_archive(
    name: str, payload: bytes, spec: AttachmentsSpec, blocked: frozenset[str], budget: Budget, *, depth: int
) -> AttachmentFinding | None:
    """Macros in OOXML, then (with inspect_archives) every member's name and content, recursively."""
    if not spec.inspect_archives and not (spec.block_macros and payload.startswith(ZIP_MAGICS)):
        return None  # only a zip (OOXML) can carry macros; other archives are not opened at all
    if depth > ARCHIVE_MAX_DEPTH:
        if kind_of(payload) is not None:
            return AttachmentFinding(name, "archive", f"archives nested deeper than {ARCHIVE_MAX_DEPTH} levels")
        return None
    try:
        listing = read_archive(payload, name, budget)
    except Exhausted:
        return AttachmentFinding(name, "archive", "archive too large to inspect (beyond the inspection budget)")
    except Unreadable as exc:
        if not spec.inspect_archives:
            return None
        return AttachmentFinding(name, "archive" if "encrypted" in str(exc) else "malformed", str(exc))
    if listing is None:
        return None
    if spec.block_macros and listing.kind == "zip":
        for member in listing.members:
            if member.name.lower().replace("\\", "/").rsplit("/", 1)[-1] == "vbaproject.bin":
                return AttachmentFinding(name, "macro", f"Office document with macros ({member.name})")
    if not spec.inspect_archives:
        return None
    for member in listing.members:
        finding = _check_name(member.name, blocked)
        if finding is not None:
            return AttachmentFinding(_join(name, member.name), "extension", f"{finding.detail} inside an archive")
    if listing.damaged:
        if listing.at_start:
            return AttachmentFinding(name, "malformed", f"damaged {listing.kind} archive that cannot be inspected")
        return None
    for member in listing.members:
        if member.content is None:
            continue  # a directory, encrypted, or a format listed by names only (7z, rar)
        inner = _join(name, member.name)
        finding = _check_content(
            inner, member.content, spec, blocked, budget, depth=depth + 1, is_attachment=True, complete=member.complete
        )
        if finding is not None:
            return finding
    return None


def _join(outer: str, inner: str) -> str:
    return f"{outer}/{inner}" if outer else inner
