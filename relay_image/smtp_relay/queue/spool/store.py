"""The spool's public face: commit, read, record progress, finish; load and release the active window.

Only the messages handed out (resident: committed, loaded, recovered) are in memory, with where their
data is; every other one is a row of the index on disk, found again by `load_due` when it is due.
Everything here runs on the event loop. Writes go through the group-commit writer and the
housekeeping to the writer thread, index statements and reads to the index thread (a 250 waits only
for its segment's fdatasync); reads of message data use the default executor so they never queue
behind an fdatasync.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smtp_relay.model.envelope import Envelope, QueueState, StoredMessage
from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.files import SpoolFiles
from smtp_relay.queue.spool.index import Aggregate, AggregateReader
from smtp_relay.queue.spool.indexer import IndexWriter
from smtp_relay.queue.spool.journal import Housekeeping
from smtp_relay.queue.spool.records import INDEX_NAME, Segment, SpoolError, encode_meta, pread_all, segment_path
from smtp_relay.queue.spool.writer import GroupCommitWriter, PendingCommit

log = logging.getLogger(__name__)


class Spool:
    """Append-only, group-committed message store with an on-disk index and a lazily synced progress journal.

    `journal_delay` bounds how long progress entries wait to be written; `journal_compact_bytes`
    is the journal size at which the index is made durable and the journal emptied. `memory_cache_bytes`
    bounds the data kept in memory after a commit, so the first delivery attempt needs no disk read.
    `active_window` is how many messages `open` hands out; the scheduler keeps at most that many in memory.
    """

    def __init__(
        self,
        root: Path,
        *,
        batch_window: float = 0.002,
        batch_max: int = 64,
        segment_max_bytes: int = 64 * 1024 * 1024,
        journal_delay: float = 0.2,
        journal_compact_bytes: int = 1024 * 1024,
        memory_cache_bytes: int = 64 * 1024 * 1024,
        active_window: int = 10_000,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.root = Path(root)
        segment_max = max(1, segment_max_bytes)
        self._idle_rotate_bytes = min(segment_max, 1024 * 1024)
        self._opened = False
        self._closed = False
        self._last_id = 0
        self.active_window = max(1, active_window)
        """Messages the scheduler may hold in memory (a reload may change it)."""

        self._resident: dict[str, StoredMessage] = {}
        """Messages handed out and neither finished nor released: the only ones in memory."""
        self._where: dict[str, tuple[int, int, int]] = {}
        """Resident message id: (segment number, data offset, data length)."""
        self._depth = 0
        self._generation = 0
        self._aggregate = Aggregate()
        self._reader = AggregateReader(self.root / INDEX_NAME)
        self._reading = False
        self._segments: dict[int, Segment] = {}
        self._current: int | None = None
        """The segment new batches are appended to."""
        self._cache: dict[str, bytes] = {}
        """Data of freshly committed messages, so the first delivery attempt needs no disk read."""
        self._cache_bytes = 0
        self._cache_limit = max(0, memory_cache_bytes)

        self._files = SpoolFiles(self.root, segment_max)
        self._indexer = IndexWriter(delay=max(0.0, journal_delay))
        wake = asyncio.Event()
        self._housekeeping = Housekeeping(
            self._files,
            self._indexer,
            wake,
            self._release_current,
            delay=max(0.0, journal_delay),
            compact_bytes=journal_compact_bytes,
        )
        self._writer = GroupCommitWriter(
            self._files,
            self._housekeeping,
            wake,
            self._index_batch,
            batch_window=max(0.0, batch_window),
            batch_max=batch_max,
        )

    # ----------------------------------------------------------------- public API

    async def open(self) -> list[StoredMessage]:
        """Create the folder, take the lock, bring the index up to date; the first `active_window` unfinished
        messages (the soonest due), sorted by id. The others stay on disk for `load_due`."""
        if self._opened:
            raise SpoolError("spool already opened")
        recovered = await self._files.open()
        self._opened = True
        self._segments.update(recovered.segments)
        self._last_id = recovered.last_id
        self._depth = recovered.depth
        self._generation = recovered.generation
        self._indexer.start(recovered.index)
        loaded = await self._load(time.time(), self.active_window, False)
        result = sorted(self._take(loaded), key=lambda m: m.id)
        self._writer.start()
        log.info(
            "spool %s open: %d message(s) queued in %d segment(s), %d in memory",
            self.root,
            self._depth,
            len(self._segments),
            len(result),
        )
        return result

    async def commit(self, envelope: Envelope, data: bytes) -> StoredMessage:
        """Make a message durable; return only after the fdatasync that covers it.

        Raises OSError (SpoolError when closed) if it is not durably stored. A message whose caller
        gives up (is cancelled) while waiting is dropped once written, since the client got no 250.
        """
        if envelope.received_at <= 0:
            envelope = dataclasses.replace(envelope, received_at=time.time())
        return await self._write(StoredMessage(id=self._new_id(), envelope=envelope, size=len(data)), data, None)

    async def adopt(
        self, envelope: Envelope, data: bytes, *, attempts: int, next_attempt: float, last_error: str, origin: str
    ) -> StoredMessage:
        """Commit a message handed off by another relay, with its original `received_at` and its progress (kept
        in the record itself, so recovery restores them without the index); returns after the fdatasync. A
        cancelled caller (the sender got no 200, so it keeps its copy) drops this one, as `commit` does."""
        message = StoredMessage(
            id=self._new_id(),
            envelope=envelope,
            size=len(data),
            attempts=attempts,
            next_attempt=next_attempt,
            last_error=last_error,
        )
        return await self._write(message, data, {"a": attempts, "n": next_attempt, "e": last_error, "o": origin})

    async def _write(self, message: StoredMessage, data: bytes, progress: dict[str, Any] | None) -> StoredMessage:
        """The one way into the segments: queued for the writer's next group commit, answered after its fdatasync."""
        if not self._opened or not self._writer.accepting():
            raise SpoolError("the spool is not open")
        if self._indexer.backlog_full():
            await self._indexer.flush()  # the index fell far behind: let it catch up before taking more
        message.pending = set(message.envelope.rcpt_tos)
        message.state = QueueState.ACTIVE
        meta = encode_meta(message.id, message.envelope, progress)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._writer.enqueue(PendingCommit(message, meta, bytes(data), future, loop.time()))
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
        if where is None and self._opened and not self._closed:
            where = await self._indexer.query(lambda conn: index.location(conn, message.id))
        if where is None:
            raise SpoolError(f"message {message.id} is not in the spool")
        number, offset, length = where
        return await asyncio.to_thread(pread_all, segment_path(self.root, number), offset, length)

    def record_attempt(self, message: StoredMessage, settled: Iterable[str]) -> None:
        """Journal an attempt: newly settled recipients and the retry state (synced lazily)."""
        if message.id not in self._resident:
            return
        done = list(settled)
        message.pending.difference_update(done)
        if message.pending:
            self._forget_data(message.id)  # it waits for a retry: let fresh mail have the memory
        self._housekeeping.add(
            {
                "i": message.id,
                "s": done,
                "a": message.attempts,
                "n": message.next_attempt,
                "e": message.last_error[:1000],
            },
            index.progress_op(message, self._generation),
        )

    def release(self, message: StoredMessage) -> None:
        """Let a resident message go from memory: it stays queued on disk, and `load_due` finds it when due."""
        if self._resident.pop(message.id, None) is None:
            return
        self._where.pop(message.id, None)
        self._forget_data(message.id)
        self._indexer.add(("UPDATE messages SET res=0 WHERE id=?", (int(message.id, 16),)))

    async def load_due(self, now: float, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages on disk only whose next attempt is at or before `now`, soonest first; resident now."""
        if not self._opened or self._closed or limit <= 0:
            return []
        return self._take(await self._load(now, limit, True))

    async def soonest_on_disk(self) -> float | None:
        """The earliest next attempt of the messages on disk only (None: none)."""
        if not self._opened or self._closed or not self.on_disk():
            return None
        return await self._indexer.query(lambda conn: index.soonest(conn, self._generation))

    def make_due(self, now: float) -> None:
        """Every message on disk only is due at `now` (a drain retries them all at once)."""
        op = ("UPDATE messages SET next=? WHERE next>? AND res!=?", (now, now, self._generation))
        self._indexer.add(op)

    def on_disk(self) -> int:
        """Unfinished messages that are not in memory."""
        return max(0, self._depth - len(self._resident))

    def resident(self) -> int:
        """Unfinished messages in memory."""
        return len(self._resident)

    async def refresh_aggregate(self, now: float) -> Aggregate:
        """Count the messages on disk only per state (a pass over the index, on a thread); kept for `aggregate`."""
        if self._reading or not self._opened or self._closed:
            return self._aggregate
        self._reading = True
        try:
            self._aggregate = await asyncio.to_thread(self._reader.read, now, self._generation)
        finally:
            self._reading = False
        return self._aggregate

    @property
    def aggregate(self) -> Aggregate:
        """The last `refresh_aggregate` result (empty until one ran)."""
        return self._aggregate if self.on_disk() else Aggregate()

    def finish(self, message: StoredMessage) -> None:
        """Every recipient is settled: forget the message and free its segment once possible."""
        if self._resident.pop(message.id, None) is None:
            return
        message.state = QueueState.DONE
        self._depth -= 1
        self._forget_data(message.id)
        where = self._where.pop(message.id, None)
        self._housekeeping.finished(message.id)
        if where is None:
            return
        segment = self._segments.get(where[0])
        if segment is None:
            return
        segment.live -= 1
        if segment.live <= 0:
            if segment.number != self._current:
                self._retire(segment)
            elif segment.size >= self._idle_rotate_bytes:
                self._housekeeping.retire_current_when_idle()

    async def flush(self) -> None:
        """Write and sync pending records, journal entries and segment removals now; apply the index's statements."""
        if self._opened and not self._closed:
            await self._writer.flush()
            await self._indexer.flush()

    async def close(self) -> None:
        """Flush and fsync everything, drop a fully delivered current segment, release the lock."""
        if self._closed or not self._opened:
            self._closed = True
            return
        self._closed = True
        await self._writer.stop()
        await self._housekeeping.settle()
        current = self._segments.get(self._current) if self._current is not None else None
        drop: int | None = None
        if current is not None and not current.live:
            drop = current.number
            self._segments.pop(current.number, None)
        # A dropped segment stays in the index's segments table: the next open forgets the missing file.
        await self._files.close(drop, self._indexer.close)
        await asyncio.to_thread(self._reader.close)
        log.info("spool %s closed with %d message(s) queued", self.root, self._depth)

    def depth(self) -> int:
        """Messages in the spool that are not finished (in memory or not)."""
        return self._depth

    def oldest_received_at(self) -> float | None:
        """The `received_at` of the oldest unfinished message (None when empty; on disk: as of the last aggregate)."""
        on_disk = [t for t in (self.aggregate.oldest_due, self.aggregate.oldest_deferred) if t is not None]
        return min([m.envelope.received_at for m in self._resident.values()] + on_disk, default=None)

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

    # ----------------------------------------------------------------- internals

    def _new_id(self) -> str:
        """Microseconds since the epoch, forced strictly increasing: unique, sortable, 14 hex digits."""
        self._last_id = max(time.time_ns() // 1000, self._last_id + 1)
        return f"{self._last_id:014X}"

    async def _load(self, now: float, limit: int, due_only: bool) -> list[index.Loaded]:
        """Messages of the index not in memory, soonest first (index.load), now marked resident."""
        gen = self._generation
        return await self._indexer.query(lambda conn: index.load(conn, now, limit, gen, due_only=due_only))

    def _abandoned(self, message: StoredMessage, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        log.info("message %s stored after its client went away: dropping it (the client got no 250)", message.id)
        self.finish(message)

    def _take(self, loaded: list[index.Loaded]) -> list[StoredMessage]:
        """Make loaded messages resident (any already in memory is skipped)."""
        taken = []
        for item in loaded:
            message = item.message
            if message.id in self._resident:
                continue
            self._resident[message.id] = message
            self._where[message.id] = item.where
            taken.append(message)
        return taken

    def _forget_data(self, message_id: str) -> None:
        data = self._cache.pop(message_id, None)
        if data is not None:
            self._cache_bytes -= len(data)

    def _retire(self, segment: Segment) -> None:
        self._segments.pop(segment.number, None)
        self._housekeeping.retire(segment.number)

    def _release_current(self) -> int | None:
        """Forget the current segment if none of its messages is live; its number, to be removed."""
        current = self._segments.get(self._current) if self._current is not None else None
        if current is None or current.live:
            return None
        self._current = None
        self._segments.pop(current.number, None)
        return current.number

    def _index_batch(self, batch: list[PendingCommit], number: int, offsets: list[int], end: int) -> None:
        """A batch is durable in segment `number`: index its messages, cache their data, answer the commits."""
        if number != self._current:
            previous = self._segments.get(self._current) if self._current is not None else None
            self._current = number
            self._segments.setdefault(number, Segment(number))
            if previous is not None and not previous.live:
                self._retire(previous)
        segment = self._segments[number]
        segment.size = end
        indexer = self._indexer
        for pending, offset in zip(batch, offsets, strict=True):
            message = pending.message
            self._depth += 1
            self._resident[message.id] = message
            self._where[message.id] = (number, offset, len(pending.data))
            segment.live += 1
            indexer.insert(
                int(message.id, 16), index.message_row(message, number, offset, pending.meta, self._generation)
            )
            if self._cache_bytes + len(pending.data) <= self._cache_limit:
                self._cache[message.id] = pending.data
                self._cache_bytes += len(pending.data)
            if not pending.future.done():
                pending.future.set_result(None)
        indexer.add((index.INDEXED, (number, end)))  # after its rows: never "indexed" before they are
        indexer.add((index.LAST_ID, (self._last_id,)))
