"""The index thread: every SQLite statement runs here, on a thread and connection of its own, so no 250 waits for it.

The segments and the journal are the durable truth; the index only saves recovery from reading them all. So its
statements are queued and applied lazily (after `delay`, in one transaction), in the order they were queued,
while the writer thread goes on syncing segments. A message finished before its row was written costs no
statement at all: its queued insert is dropped with the delete. Reads run on the same thread after everything
queued before them, so they see it. `checkpoint` is the one durability point: the journal is emptied only after
one that covered the statements of the entries it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from smtp_relay.queue.spool import index

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY = 1.0
"""Seconds before statements that failed to apply are tried again."""


class IndexWriter:
    """Queued index statements and the thread that applies them (FIFO), with reads, checkpoints and close.

    `backlog_max` queued statements make `backlog_full` true: the spool then waits for the index before it takes
    more mail, so a thread that cannot keep up never makes memory grow without bound.
    """

    def __init__(self, *, delay: float, backlog_max: int = 20_000) -> None:
        self.delay = delay
        self.backlog_max = backlog_max
        self._lock = threading.Lock()
        """Guards `_ops` and `_rows`, which the loop appends to and the thread takes."""
        self._ops: list[index.Op | None] = []
        """Statements not yet applied, in order; None: an insert dropped because its message finished first."""
        self._rows: dict[int, int] = {}
        """Message id (as a number): the position in `_ops` of its insert not yet applied."""
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._jobs: set[asyncio.Future[None]] = set()
        self.failures = 0
        """Applies that failed in a row (retried); only the first of a run is logged as an error."""

    def start(self, conn: sqlite3.Connection) -> None:
        """Take over the connection recovery opened; from now on only this thread uses it."""
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-index")

    # ----------------------------------------------------------------- on the event loop

    def add(self, op: index.Op) -> None:
        """Queue a statement (applied after `delay`, after every one queued before it)."""
        with self._lock:
            self._ops.append(op)
        self._schedule(self.delay)

    def insert(self, message_id: int, row: tuple[Any, ...]) -> None:
        """Queue the row of a message just made durable."""
        with self._lock:
            self._rows[message_id] = len(self._ops)
            self._ops.append((index.INSERT, row))
        self._schedule(self.delay)

    def delete(self, message_id: int) -> None:
        """Queue the removal of a finished message's row; if its insert is still queued, drop that instead.

        Statements queued between the two (progress, residency) then update no row, which is what they would
        do after the delete. Recovery cannot bring the message back: the segment offset queued with the
        insert's batch says its record is indexed, and the journal says it is finished.
        """
        with self._lock:
            at = self._rows.pop(message_id, None)
            if at is not None:
                self._ops[at] = None
                return
            self._ops.append((index.DELETE, (message_id,)))
        self._schedule(self.delay)

    def backlog(self) -> int:
        """Statements queued and not yet applied."""
        return len(self._ops)

    def backlog_full(self) -> bool:
        return len(self._ops) >= self.backlog_max

    async def flush(self) -> None:
        """Apply everything queued so far (a failure is logged and retried later, not raised)."""
        if self._executor is not None:
            await self._call(self._apply_logged)

    async def checkpoint(self) -> bool:
        """Apply everything queued so far and make the index durable; False (logged) if that failed."""
        if self._executor is None:
            return False
        try:
            await self._call(self._checkpoint_sync)
        except (sqlite3.Error, OSError) as exc:
            log.error("spool index checkpoint failed (the journal is kept): %s", exc)
            return False
        return True

    async def query(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read (or `index.load`) on the index thread, after every statement queued before it."""

        def run() -> T:
            self._apply_logged()
            return function(self._db())

        return await self._call(run)

    async def close(self) -> None:
        """Apply what is queued, make the index durable, close the connection and end the thread."""
        if self._executor is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self._call(self._close_sync)
        finally:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)

    def _schedule(self, delay: float) -> None:
        if self._timer is None and self._loop is not None and self._executor is not None:
            self._timer = self._loop.call_later(delay, self._kick)

    def _kick(self) -> None:
        self._timer = None
        if self._executor is not None and self._ops:
            job = asyncio.ensure_future(self._call(self._apply_logged))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def _call(self, function: Callable[[], T]) -> T:
        assert self._executor is not None, "the index is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    # ----------------------------------------------------------------- on the index thread

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "the index is not open"
        return self._conn

    def _take(self) -> list[index.Op]:
        with self._lock:
            ops, self._ops = self._ops, []
            self._rows.clear()
        return [op for op in ops if op is not None]

    def _apply(self) -> None:
        """Apply the queued statements in one transaction; on failure put them back in front, unchanged."""
        ops = self._take()
        try:
            index.apply(self._db(), ops)
            if self.failures:
                log.info("spool index writes work again after %d failure(s)", self.failures)
                self.failures = 0
        except BaseException:
            with self._lock:
                self._ops[:0] = ops
                # Inserts queued meanwhile moved back by len(ops); the ones put back are no longer dropped.
                self._rows = {key: at + len(ops) for key, at in self._rows.items()}
            raise

    def _apply_logged(self) -> None:
        try:
            self._apply()
        except Exception as exc:
            self.failures += 1
            log.log(
                logging.ERROR if self.failures == 1 else logging.DEBUG,
                "spool index write failed (retried; the segments and the journal hold it): %s",
                exc,
                exc_info=not isinstance(exc, (sqlite3.Error, OSError)),
            )
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closing: close() applies what is left
                    loop.call_soon_threadsafe(self._schedule, max(self.delay, _RETRY))

    def _checkpoint_sync(self) -> None:
        self._apply()
        index.checkpoint(self._db())

    def _close_sync(self) -> None:
        if self._conn is None:
            return
        try:
            self._checkpoint_sync()
        except (sqlite3.Error, OSError) as exc:
            log.error("spool index not made durable at close (recovery reads the journal and segment tails): %s", exc)
        finally:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()
