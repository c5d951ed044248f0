"""Opening a spool folder: its lock, and the index brought up to date from segment tails and the journal.

Blocking: the spool runs these on its writer thread, before anything else touches the folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from smtp_relay.model.envelope import Envelope, StoredMessage
from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.records import (
    INDEX_NAME,
    JOURNAL_MAGIC,
    JOURNAL_NAME,
    LOCK_NAME,
    SEGMENT_MAGIC,
    SEGMENT_RE,
    Segment,
    SpoolError,
    decode_meta,
    decode_progress,
    scan,
    segment_path,
)
from smtp_relay.util.fsutil import fsync_dir

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9A-F]{14}$")


@dataclass
class _Progress:
    settled: set[str] = field(default_factory=set)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    done: bool = False


@dataclass
class Recovered:
    index: sqlite3.Connection
    """The writer thread's connection to the index, which now holds every unfinished message."""
    generation: int
    """This process's mark on the rows it holds in memory (index.py `res`)."""
    segments: dict[int, Segment]
    """Segments that still hold an unfinished message; the others were removed."""
    depth: int
    next_segment: int
    last_id: int
    """The highest queue id found, as a number: new ids must be greater."""


def lock_spool(root: Path) -> int:
    """Create the folder if needed and take its exclusive lock; the lock's fd (held until close)."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    if created:
        fsync_dir(root)
        fsync_dir(root.parent)
    lock_fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise SpoolError(f"spool {root} is in use by another process") from None
    return lock_fd


def recover(root: Path) -> Recovered:
    """Bring the index up to date: the segments' unindexed tails, then the journal; remove finished segments.

    Reads only what the index may lack (the tail past each segment's `indexed` offset, all of a segment it
    does not know, as in a spool written before the index existed) and the journal, never every record. The
    index is made durable before the caller empties the journal.
    """
    progress = _read_journal(root)
    conn = index.connect(root / INDEX_NAME)
    try:
        return _recover(root, conn, progress)
    except BaseException:
        conn.close()
        raise


def _recover(root: Path, conn: sqlite3.Connection, progress: dict[str, _Progress]) -> Recovered:
    generation = index.read_state(conn, "gen") + 1
    last_id = index.read_state(conn, "last_id")
    numbers = sorted(int(m.group(1)) for p in root.iterdir() if (m := SEGMENT_RE.match(p.name)))
    known = {int(seg): int(indexed) for seg, indexed in conn.execute("SELECT seg, indexed FROM segments")}
    ops: list[index.Op] = []
    sizes: dict[int, int] = {}
    for number in numbers:
        path = segment_path(root, number)
        sizes[number] = size = path.stat().st_size
        start = known.get(number, 0)
        if start > size:
            log.error("%s: shorter than its index says (%d < %d): records past its end dropped", path.name, size, start)
            ops.append(("DELETE FROM messages WHERE seg=? AND off+len>?", (number, size)))
            start = 0
        if start < size:
            last_id = max(last_id, _index_tail(path, number, start, ops))
    for number in set(known) - set(numbers):
        # A segment is removed only once all its messages are finished: rows still naming it are stale.
        ops += [("DELETE FROM messages WHERE seg=?", (number,)), (index.DROP_SEGMENT, (number,))]
    index.apply(conn, ops)
    index.apply(conn, _replay(conn, progress))
    live = {int(seg): int(n) for seg, n in conn.execute("SELECT seg, count(*) FROM messages GROUP BY seg")}
    segments: dict[int, Segment] = {}
    removed: list[index.Op] = []
    for number in numbers:
        if live.get(number):
            segments[number] = Segment(number, size=sizes[number], live=live[number])
        else:
            segment_path(root, number).unlink()
            removed.append((index.DROP_SEGMENT, (number,)))
    if numbers:
        fsync_dir(root)
    row = conn.execute("SELECT max(id) FROM messages").fetchone()
    last_id = max(last_id, int(row[0] or 0))
    removed += [(index.LAST_ID, (last_id,)), ("INSERT OR REPLACE INTO state VALUES ('gen', ?)", (generation,))]
    index.apply(conn, removed)
    index.checkpoint(conn)
    depth = sum(s.live for s in segments.values())
    return Recovered(conn, generation, segments, depth, (numbers[-1] + 1) if numbers else 1, last_id)


def _index_tail(path: Path, number: int, start: int, ops: list[index.Op]) -> int:
    """Index the records of a segment from `start` (those already indexed are kept); the highest id seen."""
    frames, ignored = scan(path, SEGMENT_MAGIC, start)
    if ignored:
        log.warning("%s: ignoring %d byte(s) of torn or corrupt tail", path.name, ignored)
    last_id = 0
    end = start
    for frame in frames:
        end = frame.data_offset + frame.data_len
        try:
            message_id, envelope = decode_meta(frame.meta)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s: unreadable record at %d skipped: %s", path.name, frame.offset, exc)
            continue
        if not _ID_RE.match(message_id):
            log.error("%s: record at %d has no queue id (%r): skipped", path.name, frame.offset, message_id[:40])
            continue
        last_id = max(last_id, int(message_id, 16))
        message = StoredMessage(message_id, envelope, frame.data_len, set(envelope.rcpt_tos))
        handed = decode_progress(frame.meta)  # a handed-off message keeps its attempts even if the index lost it
        if handed is not None:
            message.attempts, message.next_attempt, message.last_error = handed
        ops.append((index.INSERT_NEW, index.message_row(message, number, frame.data_offset, frame.meta, 0)))
    ops.append((index.INDEXED, (number, end)))
    return last_id


def _replay(conn: sqlite3.Connection, progress: dict[str, _Progress]) -> list[index.Op]:
    """The journal's progress as statements on the index (settled recipients add up; finished rows go)."""
    ops: list[index.Op] = []
    for message_id, state in progress.items():
        if not _ID_RE.match(message_id):
            continue
        number = int(message_id, 16)
        if state.done:
            ops.append((index.DELETE, (number,)))
            continue
        row = conn.execute("SELECT settled, meta FROM messages WHERE id=?", (number,)).fetchone()
        if row is None:
            continue
        settled = state.settled | set(json.loads(row[0]) if row[0] else ())
        _, envelope = decode_meta(row[1])
        if not set(envelope.rcpt_tos) - settled:
            ops.append((index.DELETE, (number,)))
            continue
        params = (state.attempts, state.next_attempt, json.dumps(sorted(settled)), state.last_error, 0, number)
        ops.append((index.PROGRESS, params))
    return ops


def _read_journal(root: Path) -> dict[str, _Progress]:
    path = root / JOURNAL_NAME
    progress: dict[str, _Progress] = {}
    if not path.exists():
        return progress
    frames, ignored = scan(path, JOURNAL_MAGIC)
    if ignored:
        log.warning("journal: ignoring %d byte(s) of torn tail", ignored)
    for frame in frames:
        try:
            entries = json.loads(frame.meta)
        except ValueError:
            continue
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or "i" not in entry:
                continue
            state = progress.setdefault(str(entry["i"]), _Progress())
            if entry.get("d"):
                state.done = True
                continue
            state.settled.update(str(r) for r in entry.get("s", ()))
            state.attempts = int(entry.get("a", state.attempts))
            state.next_attempt = float(entry.get("n", state.next_attempt))
            state.last_error = str(entry.get("e", state.last_error))
    return progress


def iter_segment_records(path: Path) -> Iterator[tuple[str, Envelope, int]]:
    """(id, envelope, data length) of each valid record of a segment file, for tools and tests."""
    frames, _ = scan(path, SEGMENT_MAGIC)
    for frame in frames:
        message_id, envelope = decode_meta(frame.meta)
        yield message_id, envelope, frame.data_len
