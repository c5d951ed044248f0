"""Archive listings for the attachment check: zip, gzip/bzip2/xz, tar, 7z and rar, each bounded by one budget.

Pure (no I/O beyond in-memory streams). An archive is recognised where the tools that open it would
find it, not only by its first bytes: zip by its end-of-central-directory record wherever the archive
starts (junk or a stub before `PK` does not hide it: unzip, 7-Zip and Python's zipfile all read it),
rar by its signature within the self-extractor window rarfile scans, a single-file compressor
(gzip, bzip2, xz) by its magic, tar by a header whose checksum holds.

What is read: zip and tar members' names and the first bytes of each (whole when they look like
archives themselves, for the next level), the gzip header's FNAME and the decompressed file, 7z and
rar names only (their content would need the 7z codecs or an unrar binary: rarfile lists RAR 1.5-5
headers in pure Python without one). Every inflated byte and every member listed is charged to the
message's `Budget`; running out raises `Exhausted`.
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import rarfile  # imported with the relay (~40 ms), not on the event loop at the first rar; py7zr is lazy (below)

Kind = Literal["zip", "gzip", "bzip2", "xz", "tar", "7z", "rar"]

ARCHIVE_BUDGET: Final = 64 * 1024 * 1024
"""Decompressed bytes read from all archives of one message; more is "too large to inspect"."""
ARCHIVE_MAX_MEMBERS: Final = 2000
"""Members listed over all archives of one message; more is "too large to inspect"."""
HEAD_BYTES: Final = 4096
"""How much of a member is read when only its magic bytes matter."""
READ_CHUNK: Final = 256 * 1024
"""Slice in which a whole member is inflated (and charged to the budget)."""
SEVEN_ZIP_MAX_HEADER: Final = 8 * 1024 * 1024
"""Largest decoded 7z header py7zr may inflate (its own limit is 256 MiB)."""
RAR_SFX_WINDOW: Final = 2 * 1024 * 1024
"""How far into a file a rar signature is looked for (rarfile's own self-extractor limit)."""

ZIP_MAGICS: Final = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_EOCD: Final = b"PK\x05\x06"
_SEVEN_ZIP: Final = b"7z\xbc\xaf\x27\x1c"
_RAR: Final = b"Rar!\x1a\x07"
_GZIP: Final = b"\x1f\x8b\x08"
_BZIP2: Final = re.compile(rb"BZh[1-9]1AY&SY")
_XZ: Final = b"\xfd7zXZ\x00"
_TAR_CHECKSUM: Final = re.compile(rb"[ \x00]*[0-7]{1,8}[ \x00]*")

_MAGICS: Final[tuple[tuple[bytes | tuple[bytes, ...], Kind], ...]] = (
    (ZIP_MAGICS, "zip"), (_GZIP, "gzip"), (_XZ, "xz"), (_SEVEN_ZIP, "7z"), (_RAR, "rar")
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
        self.members_left = ARCHIVE_MAX_MEMBERS
        self.inline = inline

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
    if _is_tar(payload):
        return "tar"
    if whole and payload.rfind(_EOCD) >= 0:
        return "zip"
    if whole and payload.find(_RAR, 0, RAR_SFX_WINDOW) >= 0:
        return "rar"
    return None


def read_archive(payload: bytes, name: str, budget: Budget) -> Listing | None:
    """The archive's members, or None when the bytes are no archive. Raises Exhausted, NeedsWorker, Unreadable."""
    kind = kind_of(payload)
    if kind is None:
        return None
    at_start = kind_of(payload, whole=False) is not None
    try:
        if kind == "zip":
            return _read_zip(payload, budget)
        if kind in ("gzip", "bzip2", "xz"):
            return _read_compressed(kind, payload, name, budget)
        if kind == "tar":
            return Listing("tar", _tar_members(io.BytesIO(payload), "r:", budget))
        if kind == "7z":
            return Listing("7z", _seven_zip_members(payload, budget))
        return _read_rar(payload, budget)
    except Unreadable:
        if at_start:
            raise
        return None  # a signature found inside other data by chance, not an archive after all


# --- zip -----------------------------------------------------------------------------------------------


def open_zip(payload: bytes) -> zipfile.ZipFile:
    """The zip, wherever it starts; when data follows its end record (beyond zipfile's 64 KiB search), cut there."""
    try:
        return zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile:
        end = payload.rfind(_EOCD)
        if end < 0 or len(payload) - end <= 65557:
            raise
        comment = int.from_bytes(payload[end + 20 : end + 22], "little")
        return zipfile.ZipFile(io.BytesIO(payload[: end + 22 + comment]))


def _read_zip(payload: bytes, budget: Budget) -> Listing:
    at_start = payload.startswith(ZIP_MAGICS)
    try:
        archive = open_zip(payload)
        infos = archive.infolist()
    except Exception:
        return Listing("zip", [Member(n) for n in _local_header_names(payload)], damaged=True, at_start=at_start)
    with archive:
        budget.charge(members=len(infos))
        out = []
        for info in infos:
            encrypted = bool(info.flag_bits & 0x1)
            read = None if info.is_dir() or encrypted else _read_zip_member(archive, info, budget)
            content, complete = read if read is not None else (None, True)
            out.append(Member(info.filename, content, encrypted, info.is_dir(), complete))
    return Listing("zip", out, at_start=at_start)


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> tuple[bytes, bool] | None:
    """The member's head, or all of it when it is an archive or OLE2 file; None when it cannot be read."""
    try:
        with archive.open(info) as stream:
            return _read_charged(stream, info.filename, budget)
    except (Exhausted, NeedsWorker):
        raise
    except Exception:
        return None


def _local_header_names(payload: bytes) -> list[str]:
    """Member names from the local file headers, as repair tools read a zip whose directory is gone."""
    names = []
    for match in re.finditer(rb"PK\x03\x04", payload):
        header = payload[match.start() : match.start() + 30]
        if len(header) < 30:
            break
        length = int.from_bytes(header[26:28], "little")
        names.append(payload[match.start() + 30 : match.start() + 30 + length].decode("utf-8", "replace"))
    return names


# --- gzip, bzip2, xz and tar ---------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_charged(stream: _Readable, name: str, budget: Budget) -> tuple[bytes, bool]:
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


def gzip_name(payload: bytes) -> str | None:
    """The original file name a gzip header carries (FNAME), if any."""
    flags = payload[3] if len(payload) > 3 else 0
    pos = 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + int.from_bytes(payload[pos : pos + 2], "little")
    if not flags & 0x08:
        return None
    end = payload.find(b"\x00", pos, pos + 4096)
    return payload[pos:end].decode("latin-1") if end > pos else None


class _Inflating(io.RawIOBase):
    """The decompressed bytes of a gzip, bzip2 or xz payload, made on demand and charged to the budget.

    Concatenated streams (gzip's multi-member files) are followed, as gunzip does.
    """

    def __init__(self, kind: Kind, payload: bytes, budget: Budget) -> None:
        self._kind = kind
        self._decompressor = self._new()
        self._feed = payload
        self._budget = budget

    def _new(self) -> zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor:
        if self._kind == "gzip":
            return zlib.decompressobj(31)
        return bz2.BZ2Decompressor() if self._kind == "bzip2" else lzma.LZMADecompressor()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while True:
            d = self._decompressor
            out = b"" if d.eof else d.decompress(self._feed, len(buffer))
            if self._kind == "gzip":  # zlib keeps the input it has not used yet; bz2 and lzma buffer it themselves
                self._feed = getattr(d, "unconsumed_tail", b"")
                starved = not self._feed
            else:
                self._feed = b""
                starved = bool(getattr(d, "needs_input", True))
            if out:
                self._budget.charge(len(out))
                buffer[: len(out)] = out
                return len(out)
            if d.eof:
                rest = d.unused_data.lstrip(b"\x00")
                if not rest:
                    return 0
                self._feed, self._decompressor = rest, self._new()
            elif starved:
                return 0  # truncated: what was there has been read


def _read_compressed(kind: Kind, payload: bytes, name: str, budget: Budget) -> Listing:
    """The one compressed file (named by FNAME or the outer name less its suffix), or the tar inside."""
    stream = io.BufferedReader(_Inflating(kind, payload, budget), buffer_size=64 * 1024)
    try:
        head = stream.peek(512)[:512]
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise Unreadable(f"damaged {kind} data ({type(exc).__name__})") from None
    if _is_tar(head):
        return Listing(kind, _tar_members(stream, "r|", budget))
    inner = inner_name(name, gzip_name(payload) if kind == "gzip" else None)
    budget.charge(members=1)
    try:
        content, complete = _read_charged(stream, inner, budget)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise Unreadable(f"damaged {kind} data ({type(exc).__name__})") from None
    return Listing(kind, [Member(inner, content, complete=complete)])


def inner_name(outer: str, stored: str | None) -> str:
    """The decompressed file's name: the one the header stores, else the outer name less .gz/.bz2/.xz."""
    if stored:
        return stored
    base = outer.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        return base
    return {"tgz": f"{stem}.tar", "tbz": f"{stem}.tar", "tbz2": f"{stem}.tar", "txz": f"{stem}.tar"}.get(
        ext.lower(), stem if ext.lower() in ARCHIVE_EXTENSIONS else base
    )


def _is_tar(head: bytes) -> bool:
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


def _tar_members(fileobj: _Readable, mode: Literal["r:", "r|"], budget: Budget) -> list[Member]:
    """Names and heads of a tar's members, streaming: the data between headers is read, never kept."""
    out = []
    try:
        with tarfile.open(fileobj=fileobj, mode=mode) as archive:  # type: ignore[call-overload]
            for info in archive:
                budget.charge(members=1)
                extracted = archive.extractfile(info) if info.isfile() else None
                content, complete = _read_charged(extracted, info.name, budget) if extracted else (None, True)
                out.append(Member(info.name, content, is_dir=info.isdir(), complete=complete))
    except (Exhausted, NeedsWorker):
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        if not out:
            raise Unreadable(f"damaged tar archive ({type(exc).__name__})") from None
    return out


# --- 7z and rar: names only ----------------------------------------------------------------------------


def _seven_zip_members(payload: bytes, budget: Budget) -> list[Member]:
    """Names from the 7z header; py7zr bounds its counts, and its decoded-header limit is lowered here."""
    budget.heavy()
    import py7zr  # imported on first use: it costs ~150 ms
    import py7zr.archiveinfo

    # py7zr allows a 256 MiB decoded header; 8 MiB lists ~100,000 names, far beyond ARCHIVE_MAX_MEMBERS.
    py7zr.archiveinfo.MAX_HEADER_SIZE = min(py7zr.archiveinfo.MAX_HEADER_SIZE, SEVEN_ZIP_MAX_HEADER)
    try:
        with py7zr.SevenZipFile(io.BytesIO(payload)) as archive:
            entries = archive.list()
            encrypted = archive.needs_password()
    except py7zr.exceptions.PasswordRequired:
        raise Unreadable("encrypted 7z archive whose file names cannot be read") from None
    except Exception as exc:
        raise Unreadable(f"damaged 7z archive ({type(exc).__name__})") from None
    budget.charge(members=len(entries))
    return [Member(entry.filename, None, encrypted, entry.is_directory) for entry in entries]


def _read_rar(payload: bytes, budget: Budget) -> Listing:
    at_start = payload.startswith(_RAR)
    try:
        archive = rarfile.RarFile(io.BytesIO(payload))
        infos = archive.infolist()
        if not infos:
            raise Unreadable(
                "encrypted rar archive whose file names cannot be read"
                if archive.needs_password()
                else "damaged rar archive (no members)"
            )
    except Unreadable:
        raise
    except Exception as exc:
        raise Unreadable(f"damaged rar archive ({type(exc).__name__})") from None
    budget.charge(members=len(infos))
    members = [Member(info.filename or "", None, info.needs_password(), info.is_dir()) for info in infos]
    return Listing("rar", members, at_start=at_start)
