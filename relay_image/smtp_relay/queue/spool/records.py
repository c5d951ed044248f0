"""The spool's files and their byte format; existing spools must keep opening, so segments never change.

On-disk layout under the spool's root (one spool per process; a `flock` on `root/lock` enforces it):

- `seg-<n>.dat`: segments, `n` a 10-digit counter. A sequence of records
  `header | meta | data`, header = magic `RFS1`, u32 meta length, u64 data length, u32 CRC-32
  over the first 16 header bytes + meta + data (big endian); meta = JSON `{"id", "env"}`, and for a
  message handed off by another relay also `"p": {"a": attempts, "n": next_attempt, "e": last_error,
  "o": origin}`, its progress before it came (readers that do not know `p` ignore it).
  Segments are never appended to after a restart, so a torn record can only be the tail.
- `journal`: records with magic `RFJ1` and data length 0 whose meta is a JSON list of entries
  `{"i": id, "s": [settled rcpts], "a": attempts, "n": next_attempt, "e": last_error}` or
  `{"i": id, "d": 1}` (finished): the progress since the index was last made durable. Rewritten
  atomically (`journal.tmp` + rename) at open and whenever it grows beyond `journalCompactBytes`.
- `index.sqlite` (+ `-wal`, `-shm`): the index (`index.py`), an SQLite database of where each unfinished
  message is, its progress and its next attempt. A spool without one (written before it existed) gets it
  built at open from its segments and journal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtp_relay.model.envelope import Envelope

_HEAD = struct.Struct("!4sIQ")
_CRC = struct.Struct("!I")
HEADER_SIZE = _HEAD.size + _CRC.size
SEGMENT_MAGIC = b"RFS1"
JOURNAL_MAGIC = b"RFJ1"
JOURNAL_NAME = "journal"
INDEX_NAME = "index.sqlite"
LOCK_NAME = "lock"
SEGMENT_RE = re.compile(r"^seg-(\d{10})\.dat$")
_MAX_META = 16 * 1024 * 1024
_SNAPSHOT_CHUNK = 2000
"""Journal entries per frame when the whole state is written at once."""


class SpoolError(OSError):
    """The spool cannot take or return mail (not open, closed, in use, or record missing)."""


@dataclass
class Segment:
    """What the spool knows about one segment file while it is open."""

    number: int
    size: int = 0
    live: int = 0
    """Unfinished messages in it (in memory or not): a count, so a million queued cost no memory here."""


def segment_path(root: Path, number: int) -> Path:
    return root / f"seg-{number:010d}.dat"


def frame_header(magic: bytes, meta: bytes, data: bytes) -> bytes:
    head = _HEAD.pack(magic, len(meta), len(data))
    return head + _CRC.pack(zlib.crc32(data, zlib.crc32(meta, zlib.crc32(head))))


@dataclass
class Frame:
    offset: int
    meta: bytes
    data_offset: int
    data_len: int


def scan(path: Path, magic: bytes, start: int = 0) -> tuple[list[Frame], int]:
    """Valid frames of a file from offset `start` and the number of trailing bytes ignored (a torn or corrupt tail)."""
    frames: list[Frame] = []
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = start
        f.seek(start)
        while pos < size:
            header = f.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                break
            got_magic, meta_len, data_len = _HEAD.unpack_from(header)
            (crc,) = _CRC.unpack_from(header, _HEAD.size)
            end = pos + HEADER_SIZE + meta_len + data_len
            if got_magic != magic or meta_len > _MAX_META or end > size:
                break
            meta = f.read(meta_len)
            data = f.read(data_len)
            if zlib.crc32(data, zlib.crc32(meta, zlib.crc32(header[: _HEAD.size]))) != crc:
                break
            frames.append(Frame(pos, meta, pos + HEADER_SIZE + meta_len, data_len))
            pos = end
    return frames, size - pos


def pread_all(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of a record's data at `offset` (blocking: called from a thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        got = 0
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                raise SpoolError(f"{path.name}: record truncated at {offset + got}")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


_ENVELOPE_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Envelope))


def encode_meta(message_id: str, envelope: Envelope, progress: dict[str, Any] | None = None) -> bytes:
    """A segment record's meta; the envelope's fields are all flat, so no deep copy as in dataclasses.asdict.
    `progress` (`{"a", "n", "e", "o"}`): a handed-off message's attempts, next attempt, last error and origin,
    kept in the durable record so that recovery restores them even when the index never saw the message."""
    raw = {name: getattr(envelope, name) for name in _ENVELOPE_FIELD_NAMES}
    raw["rcpt_tos"] = list(envelope.rcpt_tos)
    record: dict[str, Any] = {"id": message_id, "env": raw}
    if progress is not None:
        record["p"] = progress
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_progress(meta: bytes) -> tuple[int, float, str] | None:
    """(attempts, next attempt, last error) a handed-off message brought along; None for any other record."""
    try:
        progress = json.loads(meta).get("p")
        if not isinstance(progress, dict):
            return None
        return int(progress.get("a", 0)), float(progress.get("n", 0.0)), str(progress.get("e", ""))
    except (ValueError, TypeError, AttributeError):
        return None


def decode_meta(meta: bytes) -> tuple[str, Envelope]:
    """(id, envelope) of a segment record's meta; unknown envelope fields are ignored.

    Raises ValueError, KeyError or TypeError for a meta that is not a record's.
    """
    raw = json.loads(meta)
    known = {k: v for k, v in raw["env"].items() if k in _ENVELOPE_FIELD_NAMES}
    known["rcpt_tos"] = tuple(known.get("rcpt_tos", ()))
    return str(raw["id"]), Envelope(**known)


def journal_frames(entries: list[dict[str, Any]]) -> bytes:
    """Journal entries as frames ready to append."""
    out = []
    for start in range(0, len(entries), _SNAPSHOT_CHUNK):
        meta = json.dumps(entries[start : start + _SNAPSHOT_CHUNK], ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )
        out += [frame_header(JOURNAL_MAGIC, meta, b""), meta]
    return b"".join(out)
