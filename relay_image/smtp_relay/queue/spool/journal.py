"""Housekeeping: delivery progress into the journal and the index, and the removal of delivered segments, lazily.

Progress entries, index statements and unlinks wait up to `delay` seconds and then go out together,
between group commits: losing them in a crash only repeats deliveries (at-least-once), never loses one.
The journal is the index's durable log: once it grows beyond `compact_bytes`, the index is made durable
(an SQLite checkpoint) and the journal emptied, so it stays small however long the queue is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.files import SpoolFiles
from smtp_relay.queue.spool.records import journal_frames

log = logging.getLogger(__name__)


class Housekeeping:
    """Pending journal entries, index statements and segment unlinks, and when they are due.

    `release_current` forgets the current segment if none of its messages is live and returns its
    number, else None.
    """

    def __init__(
        self,
        files: SpoolFiles,
        wake: asyncio.Event,
        release_current: Callable[[], int | None],
        *,
        delay: float,
        compact_bytes: int,
    ) -> None:
        self._files = files
        self._wake = wake
        self._release_current = release_current
        self.delay = delay
        self._compact_bytes = compact_bytes
        self.since: float | None = None
        """Loop time the oldest pending work was added (None: nothing pending)."""
        self._entries: list[dict[str, Any]] = []
        self._ops: list[index.Op] = []
        self._unlinks: list[int] = []
        self._retire_current = False
        self._journal_size = 0
        self._force_compact = False
        self._close_current = False
        """A released current segment whose file must still be closed (a failed run is retried)."""

    def add(self, entry: dict[str, Any], op: index.Op) -> None:
        """Queue progress: a journal entry and the index statement saying the same."""
        self._entries.append(entry)
        self._ops.append(op)
        self._mark()

    def index(self, op: index.Op) -> None:
        """Queue an index statement that needs no journal entry (a new message, what is in memory)."""
        self._ops.append(op)
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

    async def run(self) -> None:
        """Write the pending entries and statements (compacting the journal if it grew too much), unlink segments."""
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
        ops, self._ops = self._ops, []
        journal = journal_frames(entries) if entries else b""
        compact = self._force_compact or self._journal_size + len(journal) > self._compact_bytes
        try:
            await self._files.housekeep(journal, ops, unlinks, close_current, compact)
        except Exception as exc:
            # Keep serving mail and try again: the journal may now end in a partial frame, so the next
            # run compacts (the index takes everything, the journal starts empty).
            log.error("spool journal/index/cleanup failed: %s", exc, exc_info=not isinstance(exc, OSError))
            self._entries[:0] = entries
            self._ops[:0] = ops
            self._unlinks[:0] = [n for n in unlinks if n not in self._unlinks]
            self._close_current = close_current
            self._force_compact = True
            self._mark()
            return
        self._force_compact = False
        self._journal_size = 0 if compact else self._journal_size + len(journal)
