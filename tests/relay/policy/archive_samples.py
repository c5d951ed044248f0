"""Archives for the attachment tests, made here byte by byte where no writer exists (rar) or by the stdlib and py7zr."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib

import py7zr


def gzip_of(data: bytes, fname: str | None = None) -> bytes:
    """gzip with (or without) the FNAME header field, as `gzip file` or a pipe would write it."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=fname or "", mode="wb", fileobj=buffer, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar (mode "w"), or compressed ("w:gz", "w:bz2", "w:xz")."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def seven_zip_of(members: dict[str, bytes], password: str | None = None) -> bytes:
    """A 7z; with a password, its header (the names) encrypted too, like `7z a -p -mhe=on`."""
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", password=password, header_encryption=password is not None) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buffer.getvalue()


def _vint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _rar5_block(body: bytes) -> bytes:
    data = _vint(len(body)) + body
    return struct.pack("<I", zlib.crc32(data)) + data


def rar5_of(members: dict[str, bytes]) -> bytes:
    """A RAR 5 archive of stored files (the format rar 5+ writes), per the published RAR 5 format."""
    out = b"Rar!\x1a\x07\x01\x00" + _rar5_block(_vint(1) + _vint(0) + _vint(0))
    for name, data in members.items():
        raw = name.encode()
        fields = _vint(0x04) + _vint(len(data)) + _vint(0x20) + struct.pack("<I", zlib.crc32(data))
        fields += _vint(0) + _vint(0) + _vint(len(raw)) + raw  # stored, Windows, name
        out += _rar5_block(_vint(2) + _vint(0x02) + _vint(len(data)) + fields) + data
    return out + _rar5_block(_vint(5) + _vint(0) + _vint(0))


def rar5_header_encrypted() -> bytes:
    """A RAR 5 archive whose headers are encrypted (`rar a -hp`): only the encryption header is readable."""
    encryption = _vint(4) + _vint(0) + _vint(0) + _vint(0x01) + bytes([15]) + bytes(16) + bytes(12)
    return b"Rar!\x1a\x07\x01\x00" + _rar5_block(encryption) + bytes(64)


def rar4_of(members: dict[str, bytes]) -> bytes:
    """A RAR 1.5-4 archive of stored files."""

    def block(kind: int, flags: int, body: bytes) -> bytes:
        head = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, data in members.items():
        raw = name.encode()
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data), 0, 20, 0x30, len(raw), 0x20)
        out += block(0x74, 0x8000, body + raw) + data
    return out + block(0x7B, 0x4000, b"")
