"""Logging for the relay process: one line per event, written once per event-loop pass.

The relay logs every message it queues and delivers (as Postfix does), so a busy relay logs a
thousand lines a second. One write syscall per line costs as much as a tenth of handling the
message on these VMs, so lines logged on the event loop's thread are collected and written
together at the end of the loop pass. Warnings and errors, lines from other threads, lines logged
with no loop running and `flush()` (called by `logging.shutdown` at exit) write at once, pending
lines first, so the order of lines is kept. A `kill -9` can lose the lines of one loop pass.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
from typing import TextIO

ATOMIC_WRITE = select.PIPE_BUF
"""Bytes one write() puts into a pipe without interleaving with other writers (POSIX: at least 512)."""


class LoopPassHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the info lines of one event-loop pass with one write."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        """The loop that will write the pending lines (a loop that stopped since never will)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self._lock():
            self._pending.append(line)
            if record.levelno >= logging.WARNING or not self._schedule():
                self._write_pending()

    def _lock(self) -> threading.RLock:
        assert self.lock is not None  # created by Handler.__init__
        return self.lock

    def _schedule(self) -> bool:
        """Arrange a write at the end of this loop pass; False off the loop thread (write now)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._scheduled_on is not loop:
            loop.call_soon(self.flush)
            self._scheduled_on = loop
        return True

    def _write_pending(self) -> None:
        """Write in chunks of whole lines up to PIPE_BUF bytes: the worker processes of a relay share
        one stderr pipe, and only writes that small are atomic there, so no line is cut by another's."""
        self._scheduled_on = None
        lines, self._pending = self._pending, []
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) > ATOMIC_WRITE:
                    self._write("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line.encode("utf-8", "surrogateescape")) if not line.isascii() else len(line)
            if chunk:
                self._write("".join(chunk))
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "cannot write log lines"}))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def flush(self) -> None:
        with self._lock():
            self._write_pending()


def configure(level: str, fmt: str, stream: TextIO) -> None:
    """Root logging as `logging.basicConfig` would, with a LoopPassHandler and without per-record
    lookups nobody reads (source file and line, thread and process names: the format has none)."""
    logging._srcfile = None  # the logging HOWTO's "Optimization" knob
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopPassHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
