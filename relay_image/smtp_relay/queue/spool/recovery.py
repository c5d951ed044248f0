"""Opening a spool folder: its lock, and every unfinished message read back from segments and journal.

Blocking: the spool runs these on its writer thread, before anything else touches the folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from smtp_relay.model.envelope import Envelope, QueueState, StoredMessage
from smtp_relay.queue.spool.records import (
    JOURNAL_MAGIC,
    JOURNAL_NAME,
    LOCK_NAME,
    SEGMENT_MAGIC,
    SEGMENT_RE,
    Segment,
    SpoolError,
    decode_meta,
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
    messages: list[tuple[StoredMessage, int, int, int]]
    """(message, segment number, data offset, data length) of every unfinished message, sorted by id."""
    segments: dict[int, Segment]
    """Segments that still hold an unfinished message; the others were removed."""
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
    """Read the journal and every segment; remove segments whose messages are all finished."""
    progress = _read_journal(root)
    segments: dict[int, Segment] = {}
    messages: list[tuple[StoredMessage, int, int, int]] = []
    last_id = 0
    now = time.time()
    numbers = sorted(int(m.group(1)) for p in root.iterdir() if (m := SEGMENT_RE.match(p.name)))
    for number in numbers:
        path = segment_path(root, number)
        frames, ignored = scan(path, SEGMENT_MAGIC)
        if ignored:
            log.warning("%s: ignoring %d byte(s) of torn or corrupt tail", path.name, ignored)
        segment = Segment(number, size=path.stat().st_size)
        for frame in frames:
            try:
                message_id, envelope = decode_meta(frame.meta)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("%s: unreadable record at %d skipped: %s", path.name, frame.offset, exc)
                continue
            if _ID_RE.match(message_id):
                last_id = max(last_id, int(message_id, 16))
            state = progress.get(message_id, _Progress())
            pending = set(envelope.rcpt_tos) - state.settled
            if state.done or not pending:
                segment.finished.add(message_id)
                continue
            message = StoredMessage(
                id=message_id,
                envelope=envelope,
                size=frame.data_len,
                pending=pending,
                attempts=state.attempts,
                next_attempt=state.next_attempt,
                last_error=state.last_error,
                state=QueueState.DEFERRED if state.next_attempt > now else QueueState.ACTIVE,
            )
            segment.live.add(message_id)
            messages.append((message, number, frame.data_offset, frame.data_len))
        if segment.live:
            segments[number] = segment
        else:
            path.unlink()
    if numbers:
        fsync_dir(root)
    messages.sort(key=lambda item: item[0].id)
    return Recovered(messages, segments, (numbers[-1] + 1) if numbers else 1, last_id)


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
