"""Group commit: the one task that turns waiting commits into batches of one write and one fdatasync.

Commits that arrive within `batch_window` seconds (or `batch_max` of them) share a batch. A lone
sender does not wait for the window (nobody would join it). Between batches the same task runs
the journal housekeeping once it is due, so all writing is serialized.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from smtp_relay.model.envelope import StoredMessage
from smtp_relay.queue.spool.files import SpoolFiles
from smtp_relay.queue.spool.journal import Housekeeping
from smtp_relay.queue.spool.records import SpoolError

log = logging.getLogger(__name__)


@dataclass
class PendingCommit:
    message: StoredMessage
    meta: bytes
    data: bytes
    future: asyncio.Future[None]
    """Resolved once the record is durable; failed if it is not."""
    arrival: float


WrittenFn = Callable[[list[PendingCommit], int, list[int], int], None]
"""Told of a durable batch: (batch, segment number, data offset of each record, segment size)."""


class GroupCommitWriter:
    """Batches commits onto the writer thread; the spool learns of each durable batch via `written`."""

    def __init__(
        self,
        files: SpoolFiles,
        housekeeping: Housekeeping,
        wake: asyncio.Event,
        written: WrittenFn,
        *,
        batch_window: float,
        batch_max: int,
    ) -> None:
        self._files = files
        self._housekeeping = housekeeping
        self._wake = wake
        self._written = written
        self._batch_window = batch_window
        self._batch_max = batch_max
        self._queue: list[PendingCommit] = []
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._last_batch = 0
        self._task: asyncio.Task[None] | None = None
        self.closing = False
        """No more commits are taken: the spool is closing or the writer stopped."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spool-writer")

    def accepting(self) -> bool:
        """Whether a commit may be enqueued."""
        return not self.closing and self._task is not None and not self._task.done()

    def enqueue(self, pending: PendingCommit) -> None:
        self._queue.append(pending)
        if len(self._queue) == 1 or len(self._queue) >= self._batch_max:
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything enqueued or due so far is written and synced."""
        if self._task is None or self._task.done():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self._wake.set()
        await waiter

    async def stop(self) -> None:
        """Write what is pending, then end the task."""
        self.closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("spool writer failed")

    async def _run(self) -> None:
        try:
            await self._run_inner()
        finally:
            # Whatever stopped the writer, nobody may wait forever for a 250.
            self.closing = True
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(SpoolError("the spool writer stopped"))
            self._queue.clear()
            self._release_flush_waiters()

    def _release_flush_waiters(self) -> None:
        for waiter in self._flush_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._flush_waiters.clear()

    async def _run_inner(self) -> None:
        loop = asyncio.get_running_loop()
        housekeeping = self._housekeeping
        while True:
            now = loop.time()
            urgent = self.closing or bool(self._flush_waiters)
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
            since = housekeeping.since
            if since is not None and (urgent or now >= since + housekeeping.delay):
                await housekeeping.run()
                continue
            if not self._queue and since is None:
                self._release_flush_waiters()
                if self.closing:
                    return
            deadlines = []
            if self._queue:
                deadlines.append(self._queue[0].arrival + window)
            if since is not None:
                deadlines.append(since + housekeeping.delay)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, min(deadlines) - now) if deadlines else None):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _write_batch(self, batch: list[PendingCommit]) -> None:
        records = [(p.meta, p.data) for p in batch]
        try:
            number, offsets, end = await self._files.append(records)
        except Exception as exc:
            log.error("spool write of %d message(s) failed: %s", len(batch), exc)
            error = exc if isinstance(exc, OSError) else SpoolError(f"spool write failed: {exc!r}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self._written(batch, number, offsets, end)
