"""Housekeeping: delivery progress into the journal, and the removal of delivered segments, lazily.

Progress entries and unlinks wait up to `delay` seconds and then go out together, between group commits:
losing them in a crash only repeats deliveries (at-least-once), never loses one. Each entry's index statement
goes to the index thread at once (`indexer.py`), never onto this path. The journal is the index's durable log:
once it grows beyond `compact_bytes`, the index thread is asked for a checkpoint while mail keeps flowing; once
that made every statement queued before it durable, the journal is rewritten with only the frames appended
since, so it stays small however long the queue is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.files import SpoolFiles
from smtp_relay.queue.spool.indexer import IndexWriter
from smtp_relay.queue.spool.records import journal_frames

log = logging.getLogger(__name__)


class Housekeeping:
    """Pending journal entries and segment unlinks, and when they are due; the journal's compaction.

    `release_current` forgets the current segment if none of its messages is live and returns its
    number, else None.
    """

    def __init__(
        self,
        files: SpoolFiles,
        indexer: IndexWriter,
        wake: asyncio.Event,
        release_current: Callable[[], int | None],
        *,
        delay: float,
        compact_bytes: int,
    ) -> None:
        self._files = files
        self._indexer = indexer
        self._wake = wake
        self._release_current = release_current
        self.delay = delay
        self._compact_bytes = compact_bytes
        self.since: float | None = None
        """Loop time the oldest pending work was added (None: nothing pending)."""
        self._entries: list[dict[str, Any]] = []
        self._unlinks: list[int] = []
        self._retire_current = False
        self._journal_size = 0
        self._force_compact = False
        self._close_current = False
        """A released current segment whose file must still be closed (a failed run is retried)."""
        self._checkpoint: asyncio.Task[bool] | None = None
        """The index checkpoint asked for when the journal grew too big (None: none under way)."""
        self._since_cut: list[bytes] = []
        """Journal frames appended after that checkpoint was asked for: what the rewritten journal keeps."""

    def add(self, entry: dict[str, Any], op: index.Op) -> None:
        """Queue progress: a journal entry, and to the index thread the statement saying the same.

        The statement is queued first, so any checkpoint asked for once the entry is in the journal covers it.
        """
        self._indexer.add(op)
        self._entries.append(entry)
        self._mark()

    def finished(self, message_id: str) -> None:
        """Queue a message's end: the journal's mark, and the removal of its row (or of its insert, if queued)."""
        self._indexer.delete(int(message_id, 16))
        self._entries.append({"i": message_id, "d": 1})
        self._mark()

    def retire(self, number: int) -> None:
        """Queue the removal of a segment that holds no live message."""
        self._unlinks.append(number)
        self._mark()

    def retire_current_when_idle(self) -> None:
        """The current segment is big and fully delivered: close and remove it unless new mail came."""
        self._retire_current = True
        self._mark()

    def _mark(self) -> None:
        if self.since is None:
            self.since = asyncio.get_running_loop().time()
            self._wake.set()

    async def settle(self) -> None:
        """Wait for a checkpoint under way (at close: the index thread must not be stopped under it)."""
        if self._checkpoint is not None:
            await asyncio.wait({self._checkpoint})

    async def run(self) -> None:
        """Write the pending entries (the journal rewritten if a checkpoint allows it), unlink segments."""
        self.since = None
        close_current, self._close_current = self._close_current, False
        if self._retire_current:
            self._retire_current = False
            number = self._release_current()
            if number is not None:
                close_current = True
                self._unlinks.append(number)
        unlinks, self._unlinks = self._unlinks, []
        entries, self._entries = self._entries, []
        journal = journal_frames(entries) if entries else b""
        rewrite = self._checkpointed()
        if rewrite is not None:
            rewrite += journal
        try:
            await self._files.housekeep(journal, unlinks, close_current, rewrite)
        except Exception as exc:
            # Keep serving mail and try again: the journal may now end in a partial frame, so a checkpoint
            # is asked for at once and the journal rewritten after it (the index then holds everything).
            log.error("spool journal/cleanup failed: %s", exc, exc_info=not isinstance(exc, OSError))
            self._entries[:0] = entries
            self._unlinks[:0] = [n for n in unlinks if n not in self._unlinks]
            self._close_current = close_current
            self._force_compact = True
            self._since_cut = []
            self._mark()
            return
        for number in unlinks:
            # Only once the segment is gone for good: an index that forgot it would read it all back.
            self._indexer.add((index.DROP_SEGMENT, (number,)))
        if rewrite is not None:
            self._journal_size = len(rewrite)
            self._since_cut = []
        else:
            self._journal_size += len(journal)
            if self._checkpoint is not None:
                self._since_cut.append(journal)
        if self._checkpoint is None and (self._force_compact or self._journal_size > self._compact_bytes):
            self._force_compact = False
            self._since_cut = []
            # Every entry written so far had its statement queued before this: the checkpoint covers them all.
            self._checkpoint = asyncio.create_task(self._indexer.checkpoint(), name="spool-index-checkpoint")
            self._checkpoint.add_done_callback(lambda _: self._mark())

    def _checkpointed(self) -> bytes | None:
        """The journal to write instead of the current one if the checkpoint asked for is done (None: keep it)."""
        task = self._checkpoint
        if task is None or not task.done():
            return None
        self._checkpoint = None
        if task.cancelled() or task.exception() is not None or not task.result():
            self._since_cut = []  # the journal keeps everything; the size asks for another checkpoint
            return None
        return b"".join(self._since_cut)
