"""Journal housekeeping: delivery progress and the removal of delivered segments, written lazily.

Progress entries and unlinks wait up to `delay` seconds and then go out together, between group
commits: losing them in a crash only repeats deliveries (at-least-once), never loses one. When the
journal grows well beyond the live state it is rewritten from that state instead of appended to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from smtp_relay.model.envelope import StoredMessage
from smtp_relay.queue.spool.files import SpoolFiles
from smtp_relay.queue.spool.records import Segment, journal_frames

log = logging.getLogger(__name__)


class Housekeeping:
    """Pending journal entries and segment unlinks, and when they are due.

    `messages` and `segments` are the spool's own live maps (read for a snapshot, never changed
    here). `release_current` forgets the current segment if none of its messages is live and
    returns its number, else None.
    """

    def __init__(
        self,
        files: SpoolFiles,
        wake: asyncio.Event,
        messages: Mapping[str, StoredMessage],
        segments: Mapping[int, Segment],
        release_current: Callable[[], int | None],
        *,
        delay: float,
        compact_bytes: int,
    ) -> None:
        self._files = files
        self._wake = wake
        self._messages = messages
        self._segments = segments
        self._release_current = release_current
        self.delay = delay
        self._compact_bytes = compact_bytes
        self.since: float | None = None
        """Loop time the oldest pending work was added (None: nothing pending)."""
        self._entries: list[dict[str, Any]] = []
        self._unlinks: list[int] = []
        self._retire_current = False
        self._journal_size = 0
        self._journal_base = 0
        """Journal size right after the last rewrite: the size of the live state."""

    def add(self, entry: dict[str, Any]) -> None:
        """Queue a journal entry."""
        self._entries.append(entry)
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

    def snapshot(self) -> bytes:
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
        return journal_frames(entries)

    async def rewrite(self) -> None:
        """Replace the journal with the live state (at open: it drops what recovery already applied)."""
        snapshot = self.snapshot()
        await self._files.rewrite_journal([], False, snapshot)
        self._journal_size = self._journal_base = len(snapshot)

    async def run(self) -> None:
        """Write the pending entries (or a snapshot, if the journal grew too much) and unlink segments."""
        self.since = None
        close_current = False
        if self._retire_current:
            self._retire_current = False
            number = self._release_current()
            if number is not None:
                close_current = True
                self._unlinks.append(number)
        unlinks, self._unlinks = self._unlinks, []
        entries, self._entries = self._entries, []
        snapshot: bytes | None = None
        journal = journal_frames(entries) if entries else b""
        if self._journal_size + len(journal) > max(self._compact_bytes, 4 * self._journal_base):
            snapshot = self.snapshot()
            journal = b""
        try:
            if snapshot is not None:
                await self._files.rewrite_journal(unlinks, close_current, snapshot)
                self._journal_size = self._journal_base = len(snapshot)
            else:
                await self._files.append_journal(unlinks, close_current, journal)
                self._journal_size += len(journal)
        except Exception as exc:
            # Losing journal entries only repeats deliveries; keep serving mail. The journal may now
            # end in a partial frame, so the next housekeeping rewrites it from the live state.
            log.error("spool journal/cleanup failed: %s", exc, exc_info=not isinstance(exc, OSError))
            self._journal_size = self._compact_bytes + 4 * self._journal_base + 1
