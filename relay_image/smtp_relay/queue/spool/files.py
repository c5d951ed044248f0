"""The writer thread: the one thread that writes, syncs, renames and unlinks spool files and writes the index.

Running every change to the folder on one thread serializes them without locks, and keeps the
event loop free while an fdatasync takes its time. The file descriptors and the index's connection are
touched only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.records import (
    HEADER_SIZE,
    JOURNAL_NAME,
    SEGMENT_MAGIC,
    SpoolError,
    frame_header,
    segment_path,
)
from smtp_relay.queue.spool.recovery import Recovered, lock_spool, recover
from smtp_relay.util.fsutil import fsync_dir

_IOV_MAX = 512

T = TypeVar("T")


def write_all(fd: int, buffers: list[bytes]) -> None:
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


class SpoolFiles:
    """The spool folder's open files, and the thread that alone may use them.

    Each coroutine runs its blocking half on that thread; `open` starts it and `close` ends it.
    """

    def __init__(self, root: Path, segment_max_bytes: int) -> None:
        self.root = root
        self._segment_max = segment_max_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._fd: int | None = None
        """The segment being appended to."""
        self._fd_number = 0
        self._fd_size = 0
        self._next_segment = 1
        self._journal_fd: int | None = None
        self._lock_fd: int | None = None
        self._index: sqlite3.Connection | None = None
        self.generation = 0

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def open(self) -> Recovered:
        """Start the thread, take the folder's lock and read back what it holds."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        try:
            return await self._run(self._open_sync)
        except BaseException:
            await self._run(self._close_sync, None)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def append(self, records: list[tuple[bytes, bytes]]) -> tuple[int, list[int], int]:
        """Append (meta, data) records with one writev + one fdatasync; (segment, data offsets, new size)."""
        return await self._run(self._append_sync, records)

    async def housekeep(
        self, journal: bytes, ops: Sequence[index.Op], unlinks: list[int], close_current: bool, compact: bool
    ) -> None:
        """Progress into the journal (fdatasync) and the index, then remove finished segments.

        With `compact`, the journal's frames are not appended: the index is made durable and the journal
        emptied instead (it says nothing the index does not).
        """
        await self._run(self._housekeep_sync, journal, ops, unlinks, close_current, compact)

    async def load(self, now: float, limit: int, due_only: bool) -> list[index.Loaded]:
        """Messages of the index not in memory, soonest first (index.load), now marked resident."""
        return await self._run(lambda: index.load(self._db(), now, limit, self.generation, due_only=due_only))

    async def location(self, message_id: str) -> tuple[int, int, int] | None:
        return await self._run(lambda: index.location(self._db(), message_id))

    async def soonest(self) -> float | None:
        """The earliest next attempt of the messages on disk only."""
        return await self._run(lambda: index.soonest(self._db(), self.generation))

    async def close(self, drop: int | None) -> None:
        """Remove segment `drop` (if given), sync the journal and the index, close every file, end the thread."""
        assert self._executor is not None
        try:
            await self._run(self._close_sync, drop)
        finally:
            self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------- on the writer thread

    def _db(self) -> sqlite3.Connection:
        assert self._index is not None, "the spool is not open"
        return self._index

    def _open_sync(self) -> Recovered:
        self._lock_fd = lock_spool(self.root)
        recovered = recover(self.root)
        self._index = recovered.index
        self.generation = recovered.generation
        self._next_segment = recovered.next_segment
        self._rewrite_journal_sync(b"")  # recovery put all of it into the index, and made that durable
        return recovered

    def _append_sync(self, records: list[tuple[bytes, bytes]]) -> tuple[int, list[int], int]:
        if self._fd is not None and self._fd_size >= self._segment_max:
            self._close_segment_fd()
        if self._fd is None:
            number = self._next_segment
            self._next_segment += 1
            path = segment_path(self.root, number)
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
            buffers += [frame_header(SEGMENT_MAGIC, meta, data), meta, data]
            offsets.append(position + HEADER_SIZE + len(meta))
            position += HEADER_SIZE + len(meta) + len(data)
        try:
            write_all(fd, buffers)
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
                segment_path(self.root, number).unlink()
        if unlinks:
            fsync_dir(self.root)

    def _housekeep_sync(
        self, journal: bytes, ops: Sequence[index.Op], unlinks: list[int], close_current: bool, compact: bool
    ) -> None:
        if compact:
            index.apply(self._db(), ops)
            index.checkpoint(self._db())
            self._rewrite_journal_sync(b"")
        else:
            if journal:
                if self._journal_fd is None:
                    self._journal_fd = os.open(
                        self.root / JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                    )
                write_all(self._journal_fd, [journal])
                os.fdatasync(self._journal_fd)
            index.apply(self._db(), ops)
        # Only now that the index says their messages are finished may segments go.
        self._unlink_sync(unlinks, close_current)
        index.apply(self._db(), [(index.DROP_SEGMENT, (number,)) for number in unlinks])

    def _rewrite_journal_sync(self, snapshot: bytes) -> None:
        tmp = self.root / (JOURNAL_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, [snapshot])
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

    def _close_sync(self, drop: int | None) -> None:
        try:
            if drop is not None:
                self._unlink_sync([drop], True)
                index.apply(self._db(), [(index.DROP_SEGMENT, (drop,))])
            self._close_segment_fd()
            if self._journal_fd is not None:
                os.fdatasync(self._journal_fd)
            if self._index is not None:
                index.checkpoint(self._index)
        finally:
            if self._index is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._index.close()
                self._index = None
            for name in ("_fd", "_journal_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    with contextlib.suppress(OSError):
                        os.close(fd)
