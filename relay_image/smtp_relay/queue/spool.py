"""The durable spool: a message gets its 250 only once it is on disk, and survives any crash.

Group commit (the design measured in peers.md, "Measured here"): messages that arrive within
`batch_window` seconds (or `batch_max` of them) are appended to one append-only segment file with
a single write and a single `fdatasync`, which costs a fraction of a per-message file + fsync +
rename. A lone sender does not wait for the window (nobody would join it). Delivery
progress goes to a separate journal that is synced lazily: losing its tail only repeats a
delivery (at-least-once), never loses one.

On-disk layout under `root` (one spool per process; a `flock` on `root/lock` enforces it):

- `seg-<n>.dat`: segments, `n` a 10-digit counter. A sequence of records
  `header | meta | data`, header = magic `RFS1`, u32 meta length, u64 data length, u32 CRC-32
  over the first 16 header bytes + meta + data (big endian); meta = JSON `{"id", "env"}`.
  Segments are never appended to after a restart, so a torn record can only be the tail.
- `journal`: records with magic `RFJ1` and data length 0 whose meta is a JSON list of entries
  `{"i": id, "s": [settled rcpts], "a": attempts, "n": next_attempt, "e": last_error}` or
  `{"i": id, "d": 1}` (finished). Rewritten atomically (`journal.tmp` + rename) at open and
  whenever it grows well beyond the live state.

Writes, syncs and unlinks run on one dedicated writer thread, which also serializes them; reads
of message data use the default executor so they never queue behind an fdatasync.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtp_relay.model.envelope import Envelope, QueueState, StoredMessage
from smtp_relay.telemetry.metrics import RelayMetrics
from smtp_relay.util.fsutil import fsync_dir

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!4sIQ")
_CRC = struct.Struct("!I")
HEADER_SIZE = _HEAD.size + _CRC.size
SEGMENT_MAGIC = b"RFS1"
JOURNAL_MAGIC = b"RFJ1"
JOURNAL_NAME = "journal"
LOCK_NAME = "lock"
_SEGMENT_RE = re.compile(r"^seg-(\d{10})\.dat$")
_ID_RE = re.compile(r"^[0-9A-F]{14}$")
_MAX_META = 16 * 1024 * 1024
_IOV_MAX = 512
_SNAPSHOT_CHUNK = 2000


class SpoolError(OSError):
    """The spool cannot take or return mail (not open, closed, in use, or record missing)."""


def _frame_header(magic: bytes, meta: bytes, data: bytes) -> bytes:
    head = _HEAD.pack(magic, len(meta), len(data))
    return head + _CRC.pack(zlib.crc32(data, zlib.crc32(meta, zlib.crc32(head))))


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """writev everything, coping with short writes and IOV_MAX."""
    views = [memoryview(b) for b in buffers if b]
    while views:
        chunk = views[:_IOV_MAX]
        written = os.writev(fd, chunk)
        if written <= 0:
            raise SpoolError("short write to the spool")
        while written and views:
            head = views[0]
            if written >= len(head):
                written -= len(head)
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


@dataclass
class _Frame:
    offset: int
    meta: bytes
    data_offset: int
    data_len: int


def _scan(path: Path, magic: bytes) -> tuple[list[_Frame], int]:
    """Valid frames of a file and the number of trailing bytes ignored (a torn or corrupt tail)."""
    frames: list[_Frame] = []
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
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
            frames.append(_Frame(pos, meta, pos + HEADER_SIZE + meta_len, data_len))
            pos = end
    return frames, size - pos


def _pread_all(path: Path, offset: int, length: int) -> bytes:
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


def _envelope_to_json(envelope: Envelope) -> dict[str, Any]:
    """The envelope's fields as JSON values; every field is flat, so no deep copy as in dataclasses.asdict."""
    raw = {name: getattr(envelope, name) for name in _ENVELOPE_FIELD_NAMES}
    raw["rcpt_tos"] = list(envelope.rcpt_tos)
    return raw


def _envelope_from_json(raw: dict[str, Any]) -> Envelope:
    known = {k: v for k, v in raw.items() if k in _ENVELOPE_FIELD_NAMES}
    known["rcpt_tos"] = tuple(known.get("rcpt_tos", ()))
    return Envelope(**known)


@dataclass
class _Segment:
    number: int
    size: int = 0
    live: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    """Finished ids whose record is still on disk: the journal must keep saying they are done."""


@dataclass
class _Pending:
    message: StoredMessage
    meta: bytes
    data: bytes
    future: asyncio.Future[None]
    arrival: float


@dataclass
class _Progress:
    settled: set[str] = field(default_factory=set)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    done: bool = False


@dataclass
class _Recovered:
    messages: list[tuple[StoredMessage, int, int, int]]
    """(message, segment number, data offset, data length) of every unfinished message."""
    segments: dict[int, _Segment]
    next_segment: int
    last_id: int


class Spool:
    """Append-only, group-committed message store with a lazily synced progress journal.

    `metrics` is accepted for symmetry with the other stages; the commit latency is observed by the
    caller (it spans the SMTP side too). `journal_delay` bounds how long progress entries wait to be
    written; `journal_compact_bytes` is the journal size that triggers a rewrite from live state.
    """

    def __init__(
        self,
        root: Path,
        *,
        batch_window: float = 0.002,
        batch_max: int = 64,
        segment_max_bytes: int = 64 * 1024 * 1024,
        metrics: RelayMetrics | None = None,
        journal_delay: float = 0.2,
        journal_compact_bytes: int = 1024 * 1024,
        memory_cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.root = Path(root)
        self._batch_window = max(0.0, batch_window)
        self._batch_max = batch_max
        self._segment_max = max(1, segment_max_bytes)
        self._idle_rotate_bytes = min(self._segment_max, 1024 * 1024)
        self._metrics = metrics
        self._journal_delay = max(0.0, journal_delay)
        self._compact_bytes = journal_compact_bytes

        self._executor: ThreadPoolExecutor | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._opened = False
        self._closing = False
        self._closed = False
        self._last_id = 0

        # Event-loop side bookkeeping.
        self._messages: dict[str, StoredMessage] = {}
        self._where: dict[str, tuple[int, int, int]] = {}
        self._segments: dict[int, _Segment] = {}
        self._current: int | None = None
        self._queue: list[_Pending] = []
        self._entries: list[dict[str, Any]] = []
        self._unlinks: list[int] = []
        self._housekeeping_since: float | None = None
        self._retire_current = False
        self._journal_size = 0
        self._journal_base = 0
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._last_batch = 0
        self._cache: dict[str, bytes] = {}
        """Data of freshly committed messages, so the first delivery attempt needs no disk read."""
        self._cache_bytes = 0
        self._cache_limit = max(0, memory_cache_bytes)

        # Writer-thread side state (touched only on the executor's single thread).
        self._fd: int | None = None
        self._fd_number = 0
        self._fd_size = 0
        self._next_segment = 1
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------- public API

    async def open(self) -> list[StoredMessage]:
        """Create the folder, take the lock, and recover every unfinished message (sorted by id)."""
        if self._opened:
            raise SpoolError("spool already opened")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        loop = asyncio.get_running_loop()
        try:
            recovered = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            await loop.run_in_executor(self._executor, self._close_sync, None, None)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._opened = True
        self._segments = recovered.segments
        self._next_segment = recovered.next_segment
        self._last_id = recovered.last_id
        result = []
        for message, number, offset, length in recovered.messages:
            self._messages[message.id] = message
            self._where[message.id] = (number, offset, length)
            result.append(message)
        snapshot = self._snapshot()
        await loop.run_in_executor(self._executor, self._compact_sync, [], False, snapshot)
        self._journal_size = self._journal_base = len(snapshot)
        self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")
        log.info(
            "spool %s open: %d message(s) recovered from %d segment(s)", self.root, len(result), len(self._segments)
        )
        return result

    async def commit(self, envelope: Envelope, data: bytes) -> StoredMessage:
        """Make a message durable; return only after the fdatasync that covers it.

        Raises OSError (SpoolError when closed) if it is not durably stored. A message whose caller
        gives up (is cancelled) while waiting is dropped once written, since the client got no 250.
        """
        if not self._opened or self._closing or self._writer is None or self._writer.done():
            raise SpoolError("the spool is not open")
        loop = asyncio.get_running_loop()
        if envelope.received_at <= 0:
            envelope = dataclasses.replace(envelope, received_at=time.time())
        message = StoredMessage(
            id=self._new_id(),
            envelope=envelope,
            size=len(data),
            pending=set(envelope.rcpt_tos),
            state=QueueState.ACTIVE,
        )
        meta = json.dumps(
            {"id": message.id, "env": _envelope_to_json(envelope)}, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append(_Pending(message, meta, bytes(data), future, loop.time()))
        if len(self._queue) == 1 or len(self._queue) >= self._batch_max:
            self._wake.set()
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: self._abandoned(message, f))
            raise
        return message

    async def read(self, message: StoredMessage) -> bytes:
        """The message data, read from its segment."""
        cached = self._cache.get(message.id)
        if cached is not None:
            return cached
        where = self._where.get(message.id)
        if where is None:
            raise SpoolError(f"message {message.id} is not in the spool")
        number, offset, length = where
        return await asyncio.to_thread(_pread_all, self._segment_path(number), offset, length)

    def record_attempt(self, message: StoredMessage, settled: Iterable[str]) -> None:
        """Journal an attempt: newly settled recipients and the retry state (synced lazily)."""
        if message.id not in self._messages:
            return
        done = list(settled)
        message.pending.difference_update(done)
        if message.pending:
            self._forget_data(message.id)  # it waits for a retry: let fresh mail have the memory
        self._add_entry(
            {
                "i": message.id,
                "s": done,
                "a": message.attempts,
                "n": message.next_attempt,
                "e": message.last_error[:1000],
            }
        )

    def finish(self, message: StoredMessage) -> None:
        """Every recipient is settled: forget the message and free its segment once possible."""
        if self._messages.pop(message.id, None) is None:
            return
        message.state = QueueState.DONE
        self._forget_data(message.id)
        where = self._where.pop(message.id, None)
        self._add_entry({"i": message.id, "d": 1})
        if where is None:
            return
        segment = self._segments.get(where[0])
        if segment is None:
            return
        segment.live.discard(message.id)
        segment.finished.add(message.id)
        if not segment.live:
            if segment.number != self._current:
                self._retire(segment)
            elif segment.size >= self._idle_rotate_bytes:
                self._retire_current = True
                self._mark_housekeeping()

    def _forget_data(self, message_id: str) -> None:
        data = self._cache.pop(message_id, None)
        if data is not None:
            self._cache_bytes -= len(data)

    async def flush(self) -> None:
        """Write and sync pending records, journal entries and segment removals now."""
        if not self._opened or self._writer is None or self._writer.done():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self._wake.set()
        await waiter

    async def close(self) -> None:
        """Flush and fsync everything, drop a fully delivered current segment, release the lock."""
        if self._closed or not self._opened:
            self._closed = True
            return
        self._closed = True
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            try:
                await self._writer
            except Exception:
                log.exception("spool writer failed")
        current = self._segments.get(self._current) if self._current is not None else None
        drop: int | None = None
        if current is not None and not current.live:
            drop = current.number
            self._segments.pop(current.number, None)
        snapshot = self._snapshot() if drop is not None else None
        assert self._executor is not None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync, drop, snapshot)
        finally:
            self._executor.shutdown(wait=True)
        log.info("spool %s closed with %d message(s) queued", self.root, len(self._messages))

    def depth(self) -> int:
        """Messages in the spool that are not finished."""
        return len(self._messages)

    def oldest_received_at(self) -> float | None:
        """The `received_at` of the oldest unfinished message (None when empty)."""
        return min((m.envelope.received_at for m in self._messages.values()), default=None)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest unfinished message was received (0 when empty)."""
        oldest = self.oldest_received_at()
        return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)

    def disk_bytes(self) -> int:
        """Bytes held in segment files (finished records included until their segment is removed)."""
        return sum(s.size for s in self._segments.values())

    def segment_count(self) -> int:
        """Segment files on disk."""
        return len(self._segments)

    # ----------------------------------------------------------------- event-loop internals

    def _new_id(self) -> str:
        """Microseconds since the epoch, forced strictly increasing: unique, sortable, 14 hex digits."""
        self._last_id = max(time.time_ns() // 1000, self._last_id + 1)
        return f"{self._last_id:014X}"

    def _segment_path(self, number: int) -> Path:
        return self.root / f"seg-{number:010d}.dat"

    def _abandoned(self, message: StoredMessage, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        log.info("message %s stored after its client went away: dropping it (the client got no 250)", message.id)
        self.finish(message)

    def _add_entry(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)
        self._mark_housekeeping()

    def _mark_housekeeping(self) -> None:
        if self._housekeeping_since is None:
            self._housekeeping_since = asyncio.get_running_loop().time()
            self._wake.set()

    def _retire(self, segment: _Segment) -> None:
        self._segments.pop(segment.number, None)
        self._unlinks.append(segment.number)
        self._mark_housekeeping()

    def _snapshot(self) -> bytes:
        """The whole journal state as frames: progress of live messages, ids finished in live segments."""
        entries: list[dict[str, Any]] = []
        for message in self._messages.values():
            settled = set(message.envelope.rcpt_tos) - message.pending
            if settled or message.attempts or message.last_error:
                entries.append(
                    {
                        "i": message.id,
                        "s": sorted(settled),
                        "a": message.attempts,
                        "n": message.next_attempt,
                        "e": message.last_error[:1000],
                    }
                )
        for segment in self._segments.values():
            entries.extend({"i": mid, "d": 1} for mid in segment.finished)
        return self._journal_frames(entries)

    @staticmethod
    def _journal_frames(entries: list[dict[str, Any]]) -> bytes:
        out = []
        for start in range(0, len(entries), _SNAPSHOT_CHUNK):
            meta = json.dumps(
                entries[start : start + _SNAPSHOT_CHUNK], ensure_ascii=False, separators=(",", ":")
            ).encode("utf-8")
            out += [_frame_header(JOURNAL_MAGIC, meta, b""), meta]
        return b"".join(out)

    async def _write_loop(self) -> None:
        """The single writer: group-commits records, then does lazy journal and cleanup work."""
        try:
            await self._write_loop_inner()
        finally:
            # Whatever stopped the writer, nobody may wait forever for a 250.
            self._closing = True
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(SpoolError("the spool writer stopped"))
            self._queue.clear()
            for waiter in self._flush_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._flush_waiters.clear()

    async def _write_loop_inner(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            urgent = self._closing or bool(self._flush_waiters)
            # Waiting for company only pays when commits are concurrent: a lone sender (the last
            # batch held one record) is written at once instead of idling for the window.
            window = self._batch_window if self._last_batch > 1 else 0.0
            if self._queue and (
                urgent or len(self._queue) >= self._batch_max or now >= self._queue[0].arrival + window
            ):
                batch = self._queue[: self._batch_max]
                del self._queue[: self._batch_max]
                self._last_batch = len(batch)
                await self._write_batch(batch)
                continue
            since = self._housekeeping_since
            if since is not None and (urgent or now >= since + self._journal_delay):
                await self._housekeep()
                continue
            if not self._queue and since is None:
                for waiter in self._flush_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._flush_waiters.clear()
                if self._closing:
                    return
            deadlines = []
            if self._queue:
                deadlines.append(self._queue[0].arrival + window)
            if since is not None:
                deadlines.append(since + self._journal_delay)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, min(deadlines) - now) if deadlines else None):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _write_batch(self, batch: list[_Pending]) -> None:
        assert self._executor is not None
        records = [(p.meta, p.data) for p in batch]
        try:
            number, offsets, end = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._append_sync, records
            )
        except Exception as exc:
            log.error("spool write of %d message(s) failed: %s", len(batch), exc)
            error = exc if isinstance(exc, OSError) else SpoolError(f"spool write failed: {exc!r}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if number != self._current:
            previous = self._segments.get(self._current) if self._current is not None else None
            self._current = number
            self._segments.setdefault(number, _Segment(number))
            if previous is not None and not previous.live:
                self._retire(previous)
        segment = self._segments[number]
        segment.size = end
        for pending, offset in zip(batch, offsets, strict=True):
            message = pending.message
            self._messages[message.id] = message
            self._where[message.id] = (number, offset, len(pending.data))
            segment.live.add(message.id)
            if self._cache_bytes + len(pending.data) <= self._cache_limit:
                self._cache[message.id] = pending.data
                self._cache_bytes += len(pending.data)
            if not pending.future.done():
                pending.future.set_result(None)

    async def _housekeep(self) -> None:
        assert self._executor is not None
        self._housekeeping_since = None
        close_current = False
        if self._retire_current:
            self._retire_current = False
            current = self._segments.get(self._current) if self._current is not None else None
            if current is not None and not current.live:
                close_current = True
                self._current = None
                self._retire(current)
                self._housekeeping_since = None
        unlinks, self._unlinks = self._unlinks, []
        entries, self._entries = self._entries, []
        snapshot: bytes | None = None
        journal = self._journal_frames(entries) if entries else b""
        if self._journal_size + len(journal) > max(self._compact_bytes, 4 * self._journal_base):
            snapshot = self._snapshot()
            journal = b""
        try:
            if snapshot is not None:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._compact_sync, unlinks, close_current, snapshot
                )
                self._journal_size = self._journal_base = len(snapshot)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._housekeep_sync, unlinks, close_current, journal
                )
                self._journal_size += len(journal)
        except Exception as exc:
            # Losing journal entries only repeats deliveries; keep serving mail. The journal may now
            # end in a partial frame, so the next housekeeping rewrites it from the live state.
            log.error("spool journal/cleanup failed: %s", exc, exc_info=not isinstance(exc, OSError))
            self._journal_size = self._compact_bytes + 4 * self._journal_base + 1

    # ----------------------------------------------------------------- writer-thread internals

    def _open_sync(self) -> _Recovered:
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self.root)
            fsync_dir(self.root.parent)
        lock_fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolError(f"spool {self.root} is in use by another process") from None
        self._lock_fd = lock_fd
        progress = self._read_journal()
        segments: dict[int, _Segment] = {}
        messages: list[tuple[StoredMessage, int, int, int]] = []
        last_id = 0
        now = time.time()
        numbers = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _SEGMENT_RE.match(p.name)))
        for number in numbers:
            path = self._segment_path(number)
            frames, ignored = _scan(path, SEGMENT_MAGIC)
            if ignored:
                log.warning("%s: ignoring %d byte(s) of torn or corrupt tail", path.name, ignored)
            segment = _Segment(number, size=path.stat().st_size)
            for frame in frames:
                try:
                    meta = json.loads(frame.meta)
                    message_id = str(meta["id"])
                    envelope = _envelope_from_json(meta["env"])
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
            fsync_dir(self.root)
        messages.sort(key=lambda item: item[0].id)
        return _Recovered(messages, segments, (numbers[-1] + 1) if numbers else 1, last_id)

    def _read_journal(self) -> dict[str, _Progress]:
        path = self.root / JOURNAL_NAME
        progress: dict[str, _Progress] = {}
        if not path.exists():
            return progress
        frames, ignored = _scan(path, JOURNAL_MAGIC)
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

    def _append_sync(self, records: list[tuple[bytes, bytes]]) -> tuple[int, list[int], int]:
        """Append records with one writev + one fdatasync; return (segment, data offsets, new size)."""
        if self._fd is not None and self._fd_size >= self._segment_max:
            self._close_segment_fd()
        if self._fd is None:
            number = self._next_segment
            self._next_segment += 1
            path = self._segment_path(number)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fsync_dir(self.root)
            except OSError:
                os.close(fd)
                raise
            self._fd, self._fd_number, self._fd_size = fd, number, 0
        fd = self._fd
        buffers: list[bytes] = []
        offsets: list[int] = []
        position = self._fd_size
        for meta, data in records:
            buffers += [_frame_header(SEGMENT_MAGIC, meta, data), meta, data]
            offsets.append(position + HEADER_SIZE + len(meta))
            position += HEADER_SIZE + len(meta) + len(data)
        try:
            _write_all(fd, buffers)
            os.fdatasync(fd)
        except OSError:
            # Never leave a partial record in front of later ones; and never trust this file again.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._fd_size)
            self._close_segment_fd()
            raise
        self._fd_size = position
        return self._fd_number, offsets, position

    def _close_segment_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _unlink_sync(self, unlinks: list[int], close_current: bool) -> None:
        if close_current:
            self._close_segment_fd()
        for number in unlinks:
            with contextlib.suppress(FileNotFoundError):
                self._segment_path(number).unlink()
        if unlinks:
            fsync_dir(self.root)

    def _housekeep_sync(self, unlinks: list[int], close_current: bool, journal: bytes) -> None:
        try:
            if journal:
                if self._journal_fd is None:
                    self._journal_fd = os.open(
                        self.root / JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                    )
                _write_all(self._journal_fd, [journal])
                os.fdatasync(self._journal_fd)
        finally:
            self._unlink_sync(unlinks, close_current)

    def _compact_sync(self, unlinks: list[int], close_current: bool, snapshot: bytes) -> None:
        """Unlink finished segments, then atomically replace the journal with the live state."""
        self._unlink_sync(unlinks, close_current)
        tmp = self.root / (JOURNAL_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, [snapshot])
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.root / JOURNAL_NAME)
        fsync_dir(self.root)
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        self._journal_fd = os.open(
            self.root / JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )

    def _close_sync(self, drop: int | None, snapshot: bytes | None) -> None:
        try:
            if drop is not None and snapshot is not None:
                self._compact_sync([drop], True, snapshot)
            self._close_segment_fd()
            if self._journal_fd is not None:
                os.fdatasync(self._journal_fd)
        finally:
            for name in ("_fd", "_journal_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    with contextlib.suppress(OSError):
                        os.close(fd)


def iter_segment_records(path: Path) -> Iterator[tuple[str, Envelope, int]]:
    """(id, envelope, data length) of each valid record of a segment file, for tools and tests."""
    frames, _ = _scan(path, SEGMENT_MAGIC)
    for frame in frames:
        meta = json.loads(frame.meta)
        yield str(meta["id"]), _envelope_from_json(meta["env"]), frame.data_len
