"""The writer thread: the one thread that writes, syncs, renames and unlinks spool files.

Running every change to the folder on one thread serializes them without locks, and keeps the
event loop free while an fdatasync takes its time. The file descriptors are touched only there. The
index is not written here (`indexer.py` has a thread of its own), so a segment's fdatasync, and the 250
behind it, never waits for SQLite; only recovery, before anything else runs, uses it on this thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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
            await self._run(self._unlock_sync)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def append(self, records: list[tuple[bytes, bytes]]) -> tuple[int, list[int], int]:
        """Append (meta, data) records with one writev + one fdatasync; (segment, data offsets, new size)."""
        return await self._run(self._append_sync, records)

    async def housekeep(self, journal: bytes, unlinks: list[int], close_current: bool, rewrite: bytes | None) -> None:
        """Progress into the journal (fdatasync), then remove finished segments.

        With `rewrite` (an index checkpoint covers everything else), the journal is atomically replaced by
        those frames instead, `journal` not appended.
        """
        await self._run(self._housekeep_sync, journal, unlinks, close_current, rewrite)

    async def close(self, drop: int | None, before_unlock: Callable[[], Awaitable[None]]) -> None:
        """Remove segment `drop` (if given), sync the journal, close every file; await `before_unlock` (the
        index's close), and only then release the folder's lock and end the thread."""
        assert self._executor is not None
        try:
            try:
                await self._run(self._close_sync, drop)
            finally:
                await before_unlock()
        finally:
            try:
                await self._run(self._unlock_sync)
            finally:
                self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------- on the writer thread

    def _open_sync(self) -> Recovered:
        self._lock_fd = lock_spool(self.root)
        recovered = recover(self.root)
        self._next_segment = recovered.next_segment
        try:
            self._rewrite_journal_sync(b"")  # recovery put all of it into the index, and made that durable
        except BaseException:
            recovered.index.close()
            raise
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

    def _housekeep_sync(self, journal: bytes, unlinks: list[int], close_current: bool, rewrite: bytes | None) -> None:
        if rewrite is not None:
            self._rewrite_journal_sync(rewrite)
        elif journal:
            if self._journal_fd is None:
                self._journal_fd = os.open(
                    self.root / JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            write_all(self._journal_fd, [journal])
            os.fdatasync(self._journal_fd)
        # Their messages' ends are in the journal (or the index) now: a crash cannot resurrect them.
        self._unlink_sync(unlinks, close_current)

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
            self._close_segment_fd()
            if self._journal_fd is not None:
                os.fdatasync(self._journal_fd)
        finally:
            for name in ("_fd", "_journal_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _unlock_sync(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
