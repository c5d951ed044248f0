"""Archive listings for the attachment check: zip, gzip/bzip2/xz, tar, 7z and rar, each bounded by one budget.

Pure (no I/O beyond in-memory streams). Archives are recognised by `archive_formats.kind_of`, where
the tools that open them would find them (a zip behind junk, a rar behind a self-extractor stub).

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
from typing import Final, Literal

import rarfile  # imported with the relay (~40 ms), not on the event loop at the first rar; py7zr is lazy (below)

from smtp_relay.policy.archive_formats import (
    ARCHIVE_EXTENSIONS,
    EOCD,
    RAR_MAGIC,
    ZIP_MAGICS,
    Budget,
    Exhausted,
    Kind,
    Listing,
    Member,
    NeedsWorker,
    Readable,
    Unreadable,
    is_tar,
    kind_of,
    read_charged,
)

SEVEN_ZIP_MAX_HEADER: Final = 8 * 1024 * 1024
"""Largest decoded 7z header py7zr may inflate (its own limit is 256 MiB)."""


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
        end = payload.rfind(EOCD)
        if end < 0 or len(payload) - end <= 65557:
            raise
        comment = int.from_bytes(payload[end + 20 : end + 22], "little")
        return zipfile.ZipFile(io.BytesIO(payload[: end + 22 + comment]))


def _read_zip(payload: bytes, budget: Budget) -> Listing:
    at_start = payload.startswith(ZIP_MAGICS)
    budget.afford(_declared_entries(payload))  # before zipfile builds an object per entry of the directory
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


def _declared_entries(payload: bytes) -> int:
    """How many entries the zip's end record (or its zip64 record) says the central directory has."""
    end = payload.rfind(EOCD)
    if end < 0 or len(payload) < end + 22:
        return 0
    entries = int.from_bytes(payload[end + 10 : end + 12], "little")
    zip64 = payload.rfind(b"PK\x06\x06", 0, end)
    if entries == 0xFFFF and zip64 >= 0:
        return int.from_bytes(payload[zip64 + 32 : zip64 + 40], "little")
    directory = end - int.from_bytes(payload[end + 12 : end + 16], "little")
    if entries and payload[directory : directory + 4] != b"PK\x01\x02":
        return 0  # no directory where the record says: the signature is a chance match in other data
    return entries


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> tuple[bytes, bool] | None:
    """The member's head, or all of it when it is an archive or OLE2 file; None when it cannot be read."""
    try:
        with archive.open(info) as stream:
            return read_charged(stream, info.filename, budget)
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
    if is_tar(head):
        return Listing(kind, _tar_members(stream, "r|", budget))
    inner = inner_name(name, gzip_name(payload) if kind == "gzip" else None)
    budget.charge(members=1)
    try:
        content, complete = read_charged(stream, inner, budget)
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


def _tar_members(fileobj: Readable, mode: Literal["r:", "r|"], budget: Budget) -> list[Member]:
    """Names and heads of a tar's members, streaming: the data between headers is read, never kept."""
    out = []
    try:
        with tarfile.open(fileobj=fileobj, mode=mode) as archive:  # type: ignore[call-overload]
            for info in archive:
                budget.charge(members=1)
                extracted = archive.extractfile(info) if info.isfile() else None
                content, complete = read_charged(extracted, info.name, budget) if extracted else (None, True)
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
    at_start = payload.startswith(RAR_MAGIC)
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
