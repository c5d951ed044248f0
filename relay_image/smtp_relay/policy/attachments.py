"""Malware attachment inspection: blocked extensions, executables by magic bytes, Office macros, zip contents.

Pure (no I/O). The walk uses the shared MIME parser (`mime.parse_message`), but never trusts it alone: every part
is inspected inside its own guard, file names are gathered from the parsed headers *and* from the raw
header text (RFC 2231 continuations and RFC 2047 encoded words decoded here), base64 is also decoded
leniently, and when the MIME structure itself is broken (missing boundaries, ...) the raw message is
searched for attachment names as well. Whatever cannot be inspected but looks like an attachment is
reported as ``malformed``: a parser error must never let an attachment through.

Archives are bounded (depth, member count, decompressed bytes), so a zip bomb costs at most
``ARCHIVE_BUDGET`` bytes of inflation and then counts as a finding itself.

Legacy Office (OLE2) macro detection is a byte search for the UTF-16 names of the VBA storages and
streams (``_VBA_PROJECT``, ``Macros``, ``VBA``) after checking the OLE2 signature; it does not parse the
compound file's directory, so it may flag a document that merely contains those names.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from email import errors as email_errors
from email.message import Message
from typing import Final, Literal

from smtp_relay.config.spec import AttachmentsSpec
from smtp_relay.policy.client_view import decoded_bodies, extension_of, part_names, raw_names
from smtp_relay.policy.mime import MAX_MULTIPARTS, parse_message, too_complex

Reason = Literal["extension", "executable", "macro", "archive", "malformed"]

ARCHIVE_MAX_DEPTH: Final = 3
"""Zips inside zips are opened up to this depth; deeper nesting is itself a finding."""
ARCHIVE_BUDGET: Final = 64 * 1024 * 1024
"""Decompressed bytes read from all archives of one message; more is treated as a zip bomb."""
ARCHIVE_MAX_MEMBERS: Final = 2000
"""Members listed over all archives of one message; more is treated as a zip bomb."""
MAX_UUENCODE_SCAN: Final = 1024 * 1024
"""How much of each part is searched for uuencode "begin" lines."""
HEAD_BYTES: Final = 4096
"""How much of an archive member is read when only its magic bytes matter."""

_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS: Final = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
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


@dataclass(frozen=True)
class AttachmentFinding:
    """Why a message is refused: the offending file (path inside archives joined by '/') and the rule."""

    filename: str
    reason: Reason
    detail: str


class _Budget:
    """Shared limits for one message, so many small archives cannot add up to a bomb either."""

    def __init__(self) -> None:
        self.bytes_left = ARCHIVE_BUDGET
        self.members_left = ARCHIVE_MAX_MEMBERS


class _Exhausted(Exception):
    """The archive budget ran out."""


def inspect_attachments(
    data: bytes, spec: AttachmentsSpec, *, parsed: Message | None = None
) -> AttachmentFinding | None:
    """The first blocked attachment of the message, or None. Never raises: failure is a finding.

    `parsed` is `parse_message(data)` when the caller already has it.
    """
    try:
        if too_complex(data):
            return AttachmentFinding("", "malformed", f"more than {MAX_MULTIPARTS} multipart parts")
        return _inspect(data, spec, parsed if parsed is not None else parse_message(data))
    except Exception as exc:  # a bug or a parser crash must not let the message through
        return AttachmentFinding("", "malformed", f"message could not be inspected ({type(exc).__name__})")


def _inspect(data: bytes, spec: AttachmentsSpec, message: Message) -> AttachmentFinding | None:
    blocked = frozenset(ext.lower() for ext in spec.block_extensions)
    budget = _Budget()
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
    part: Message, spec: AttachmentsSpec, blocked: frozenset[str], budget: _Budget
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
    ext, previous = extension_of(name)
    if ext and ext in blocked:
        double = f" (double extension .{previous}.{ext})" if previous else ""
        return AttachmentFinding(name, "extension", f"blocked extension .{ext}{double}")
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
    budget: _Budget,
    *,
    depth: int,
    is_attachment: bool,
) -> AttachmentFinding | None:
    kind = _executable_kind(payload[:HEAD_BYTES], is_attachment=is_attachment)
    if kind is not None:
        return AttachmentFinding(name, "executable", kind)
    if payload.startswith(_OLE2_MAGIC):
        if spec.block_macros and any(marker in payload for marker in _OLE2_VBA_MARKERS):
            return AttachmentFinding(name, "macro", "Office (OLE2) document with a VBA project")
        return None
    if payload.startswith(_ZIP_MAGICS):
        return _check_zip(name, payload, spec, blocked, budget, depth=depth)
    return None


def _check_zip(
    name: str, payload: bytes, spec: AttachmentsSpec, blocked: frozenset[str], budget: _Budget, *, depth: int
) -> AttachmentFinding | None:
    """Macros in OOXML, then (with inspect_archives) every member's name and content, recursively."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        members = archive.infolist()
    except Exception:
        return _check_broken_zip(name, payload, spec, blocked)
    if depth > ARCHIVE_MAX_DEPTH:
        return AttachmentFinding(name, "archive", f"archives nested deeper than {ARCHIVE_MAX_DEPTH} levels")
    with archive:
        budget.members_left -= len(members)
        if budget.members_left < 0:
            return AttachmentFinding(name, "archive", "too many archive members to inspect (zip bomb?)")
        if spec.block_macros:
            for info in members:
                if info.filename.lower().replace("\\", "/").rsplit("/", 1)[-1] == "vbaproject.bin":
                    return AttachmentFinding(name, "macro", f"Office document with macros ({info.filename})")
        if not spec.inspect_archives:
            return None
        for info in members:
            inner = f"{name}/{info.filename}" if name else info.filename
            finding = _check_name(info.filename, blocked)
            if finding is not None:
                return AttachmentFinding(inner, "extension", f"{finding.detail} inside an archive")
        for info in members:
            if info.is_dir():
                continue
            inner = f"{name}/{info.filename}" if name else info.filename
            try:
                content = _read_member(archive, info, budget)
            except _Exhausted:
                return AttachmentFinding(inner, "archive", "archive expands beyond the inspection budget (zip bomb?)")
            except Exception as exc:
                if info.flag_bits & 0x1:
                    continue  # encrypted: its name was checked, its content cannot be
                return AttachmentFinding(inner, "malformed", f"archive member could not be read ({type(exc).__name__})")
            finding = _check_content(inner, content, spec, blocked, budget, depth=depth + 1, is_attachment=True)
            if finding is not None:
                return finding
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    """The member's head, or all of it when it is itself a zip or an OLE2 file; charged to the budget."""
    with archive.open(info) as stream:
        head = stream.read(min(HEAD_BYTES, max(budget.bytes_left, 0) + 1))
        budget.bytes_left -= len(head)
        if budget.bytes_left < 0:
            raise _Exhausted
        if not (head.startswith(_ZIP_MAGICS) or head.startswith(_OLE2_MAGIC)):
            return head
        rest = stream.read(budget.bytes_left + 1)
        budget.bytes_left -= len(rest)
        if budget.bytes_left < 0:
            raise _Exhausted
        return head + rest


def _check_broken_zip(
    name: str, payload: bytes, spec: AttachmentsSpec, blocked: frozenset[str]
) -> AttachmentFinding | None:
    """A zip the zipfile module refuses: read the member names from the local headers as repair tools do."""
    names = []
    for match in re.finditer(rb"PK\x03\x04", payload):
        start = match.start()
        header = payload[start : start + 30]
        if len(header) < 30:
            break
        length = int.from_bytes(header[26:28], "little")
        names.append(payload[start + 30 : start + 30 + length].decode("utf-8", "replace"))
    for member in names:
        if spec.block_macros and member.lower().endswith("vbaproject.bin"):
            return AttachmentFinding(name, "macro", f"Office document with macros ({member})")
        if spec.inspect_archives:
            finding = _check_name(member, blocked)
            if finding is not None:
                return AttachmentFinding(f"{name}/{member}", "extension", f"{finding.detail} inside an archive")
    if spec.inspect_archives:
        return AttachmentFinding(name, "malformed", "damaged zip archive that cannot be inspected")
    return None
