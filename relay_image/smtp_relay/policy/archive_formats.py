"""Recognising archives, and what every archive reader shares: the message's budget, members, listings.

Pure. An archive is recognised where the tools that open it would find it, not only by its first
bytes: zip by its end-of-central-directory record wherever the archive starts (junk or a stub before
`PK` does not hide it: unzip, 7-Zip and Python's zipfile all read it), rar by its signature within
the self-extractor window rarfile scans, a single-file compressor (gzip, bzip2, xz) by its magic,
tar by a header whose checksum holds. The readers are in `archives`.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import Final, Literal, Protocol

Kind = Literal["zip", "gzip", "bzip2", "xz", "tar", "7z", "rar"]

ARCHIVE_BUDGET: Final = 64 * 1024 * 1024
"""Decompressed bytes read from all archives of one message; more is "too large to inspect"."""
ARCHIVE_MAX_MEMBERS: Final = 2000
"""Members listed over all archives of one message; more is "too large to inspect"."""
INLINE_MAX_MEMBERS: Final = 200
"""Members an inspection on the event loop may list before it moves to the worker pool."""
HEAD_BYTES: Final = 4096
"""How much of a member is read when only its magic bytes matter."""
READ_CHUNK: Final = 256 * 1024
"""Slice in which a whole member is inflated (and charged to the budget)."""
RAR_SFX_WINDOW: Final = 2 * 1024 * 1024
"""How far into a file a rar signature is looked for (rarfile's own self-extractor limit)."""

ZIP_MAGICS: Final = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
EOCD: Final = b"PK\x05\x06"
_SEVEN_ZIP: Final = b"7z\xbc\xaf\x27\x1c"
RAR_MAGIC: Final = b"Rar!\x1a\x07"
_GZIP: Final = b"\x1f\x8b\x08"
_BZIP2: Final = re.compile(rb"BZh[1-9]1AY&SY")
_XZ: Final = b"\xfd7zXZ\x00"
_TAR_CHECKSUM: Final = re.compile(rb"[ \x00]*[0-7]{1,8}[ \x00]*")

_MAGICS: Final[tuple[tuple[bytes | tuple[bytes, ...], Kind], ...]] = (
    (ZIP_MAGICS, "zip"), (_GZIP, "gzip"), (_XZ, "xz"), (_SEVEN_ZIP, "7z"), (RAR_MAGIC, "rar")
)  # fmt: skip
ARCHIVE_EXTENSIONS: Final = frozenset(
    {"zip", "gz", "tgz", "bz2", "tbz", "tbz2", "xz", "txz", "tar", "7z", "rar", "z", "zst", "lz", "lzma", "cab", "arj"}
)
"""Names that promise an archive: members with them are read whole (for the next level), and an
extension before one of them counts as the file's (`evil.exe.gz` is an executable)."""


class Exhausted(Exception):
    """The message's inspection budget ran out."""


class Unreadable(Exception):
    """The archive could not be listed; the text says why (no content, no secrets)."""


class Budget:
    """Shared limits for one message, so many small archives cannot add up to a bomb either.

    `inline` budgets are the small ones of an inspection on the event loop: running out there raises
    `NeedsWorker`, and the caller inspects the message again in its worker pool with a full budget.
    """

    def __init__(self, bytes_left: int | None = None, *, inline: bool = False) -> None:
        self.bytes_left = ARCHIVE_BUDGET if bytes_left is None else bytes_left
        self.members_left = INLINE_MAX_MEMBERS if inline else ARCHIVE_MAX_MEMBERS
        self.inline = inline

    def afford(self, members: int) -> None:
        """Refuse an archive that declares more members than are left, before listing them."""
        if members > self.members_left:
            raise NeedsWorker if self.inline else Exhausted

    def charge(self, nbytes: int = 0, members: int = 0) -> None:
        self.bytes_left -= nbytes
        self.members_left -= members
        if self.bytes_left < 0 or self.members_left < 0:
            raise NeedsWorker if self.inline else Exhausted

    def heavy(self) -> None:
        """A step too costly for the event loop whatever its size (7z headers, a first py7zr import)."""
        if self.inline:
            raise NeedsWorker


class NeedsWorker(Exception):
    """An inline inspection outgrew its budget: run it again off the event loop (policy.data_stage)."""


@dataclass(frozen=True)
class Member:
    """One file of an archive: its name and, when readable, its head (or all of it; see module doc)."""

    name: str
    content: bytes | None = None
    encrypted: bool = False
    is_dir: bool = False
    complete: bool = True
    """`content` is the whole file, not only its head (a head is never an archive: see `wants_whole`)."""


@dataclass(frozen=True)
class Listing:
    """What an archive holds. `damaged`: listed from local headers only, its content unknown."""

    kind: Kind
    members: list[Member]
    damaged: bool = False
    at_start: bool = True
    """The archive begins at the first byte (not found behind junk): when it cannot be read, that is a finding."""


def wants_whole(name: str, head: bytes) -> bool:
    """Should the whole member be read: it is (or is named as) an archive or an OLE2 document."""
    if head.startswith((*ZIP_MAGICS, OLE2_MAGIC)) or kind_of(head, whole=False) is not None:
        return True
    base = name.rsplit("/", 1)[-1].lower()
    return "." in base and base.rsplit(".", 1)[-1] in ARCHIVE_EXTENSIONS


def kind_of(payload: bytes, *, whole: bool = True) -> Kind | None:
    """Which archive the bytes are; `whole`: `payload` is the entire file (so trailers can be looked for)."""
    for magic, kind in _MAGICS:
        if payload.startswith(magic):
            return kind
    if _BZIP2.match(payload):
        return "bzip2"
    if is_tar(payload):
        return "tar"
    if whole and payload.rfind(EOCD) >= 0:
        return "zip"
    if whole and payload.find(RAR_MAGIC, 0, RAR_SFX_WINDOW) >= 0:
        return "rar"
    return None


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def read_charged(stream: Readable, name: str, budget: Budget) -> tuple[bytes, bool]:
    """The member's head, or all of it when `wants_whole`; and whether that is all of it."""
    head = stream.read(min(HEAD_BYTES, max(budget.bytes_left, 0) + 1))
    budget.charge(len(head))
    if not wants_whole(name, head):
        return head, len(head) < HEAD_BYTES
    whole = bytearray(head)
    # In slices: one big read would copy (and hold the GIL for) tens of MB at a time, stalling the event loop.
    while chunk := stream.read(min(READ_CHUNK, max(budget.bytes_left, 0) + 1)):
        budget.charge(len(chunk))
        whole += chunk
    return bytes(whole), True


def is_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    if not _TAR_CHECKSUM.fullmatch(head[148:156]):  # cheap: most data fails here, before tarfile's parse
        return False
    try:
        tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")  # checks the header checksum
    except tarfile.HeaderError:
        return False
    return True
