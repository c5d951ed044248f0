"""The spool's index: an SQLite database (`index.sqlite`) saying where every unfinished message is, its
progress, and when it is due, so that memory holds only the active window and a restart reads no message body.

WAL with synchronous=NORMAL: a transaction costs no fsync, and a kill -9 loses nothing written. What a
power loss may take is found again at open: new messages in the segments' tails (each segment's `indexed`
offset says how far its records are in the index), progress in the journal, which is emptied only after a
`checkpoint` made the index durable. Blocking: the index thread (`indexer.py`) uses one connection, never the
writer thread that syncs segments; `AggregateReader` has its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtp_relay.model.envelope import QueueState, StoredMessage
from smtp_relay.queue.spool.records import decode_meta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    seg INTEGER NOT NULL,
    off INTEGER NOT NULL,
    len INTEGER NOT NULL,
    received REAL NOT NULL,
    next REAL NOT NULL,
    attempts INTEGER NOT NULL,
    settled TEXT,
    err TEXT NOT NULL,
    meta BLOB NOT NULL,
    res INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS due ON messages (next, res, received);
CREATE TABLE IF NOT EXISTS segments (seg INTEGER PRIMARY KEY, indexed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""
"""`id` is the 14-hex-digit queue id as a number; `res` the generation of the process holding the message in
memory (0: on disk only), so loading skips resident rows inside SQLite; `settled` a JSON list (NULL: none)."""

INSERT = "INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)"
INSERT_NEW = "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)"
PROGRESS = "UPDATE messages SET attempts=?, next=?, settled=?, err=?, res=? WHERE id=?"
DELETE = "DELETE FROM messages WHERE id=?"
INDEXED = "INSERT OR REPLACE INTO segments VALUES (?,?)"
DROP_SEGMENT = "DELETE FROM segments WHERE seg=?"
LAST_ID = "INSERT OR REPLACE INTO state VALUES ('last_id', ?)"
ALL_DUE = "UPDATE messages SET next=? WHERE next>?"

Op = tuple[str, tuple[Any, ...]]
"""One statement and its parameters, applied in order with the others of a batch."""

_COLUMNS = "id, seg, off, len, next, attempts, settled, err, meta"


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the index; autocommit mode, transactions are explicit in `apply`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA cache_size=-8192")  # 8 MiB of pages: the index's memory is bounded, not the queue's
    conn.executescript(_SCHEMA)
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Make every committed transaction durable in the database file (synced), so the journal may be emptied."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise sqlite3.OperationalError("index checkpoint blocked by a reader")


def apply(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Run `ops` in order in one transaction (consecutive ops of one statement as one executemany)."""
    if not ops:
        return
    conn.execute("BEGIN")
    try:
        start = 0
        while start < len(ops):
            sql = ops[start][0]
            end = start
            while end < len(ops) and ops[end][0] == sql:
                end += 1
            conn.executemany(sql, [params for _, params in ops[start:end]])
            start = end
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def message_row(message: StoredMessage, number: int, offset: int, meta: bytes, res: int) -> tuple[Any, ...]:
    """The `messages` row of a message just committed at (segment, data offset)."""
    return (
        int(message.id, 16),
        number,
        offset,
        message.size,
        message.envelope.received_at,
        message.next_attempt,
        message.attempts,
        None,
        message.last_error,
        meta,
        res,
    )


def progress_op(message: StoredMessage, res: int) -> Op:
    """The statement recording a message's progress (and whether it stays in memory)."""
    settled = sorted(set(message.envelope.rcpt_tos) - message.pending)
    return (
        PROGRESS,
        (
            message.attempts,
            message.next_attempt,
            json.dumps(settled) if settled else None,
            message.last_error[:1000],
            res,
            int(message.id, 16),
        ),
    )


@dataclass(frozen=True)
class Loaded:
    """A message read from the index, and where its data is."""

    message: StoredMessage
    where: tuple[int, int, int]
    """(segment number, data offset, data length)."""


def _loaded(row: tuple[Any, ...], now: float) -> Loaded:
    number, segment, offset, length, next_attempt, attempts, settled, err, meta = row
    _, envelope = decode_meta(meta)
    pending = set(envelope.rcpt_tos) - set(json.loads(settled) if settled else ())
    message = StoredMessage(
        id=f"{number:014X}",
        envelope=envelope,
        size=length,
        pending=pending,
        attempts=attempts,
        next_attempt=next_attempt,
        last_error=err,
        state=QueueState.DEFERRED if next_attempt > now else QueueState.ACTIVE,
    )
    return Loaded(message, (segment, offset, length))


def load(conn: sqlite3.Connection, now: float, limit: int, gen: int, *, due_only: bool = True) -> list[Loaded]:
    """Up to `limit` messages not in memory (due at `now` when `due_only`), soonest first; marks them resident."""
    if limit <= 0:
        return []
    where = "next<=? AND res!=?" if due_only else "res!=?"
    params: tuple[Any, ...] = (now, gen, limit) if due_only else (gen, limit)
    rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY next LIMIT ?", params).fetchall()
    if rows:
        apply(conn, [("UPDATE messages SET res=? WHERE id=?", (gen, row[0])) for row in rows])
    return [_loaded(row, now) for row in rows]


def location(conn: sqlite3.Connection, message_id: str) -> tuple[int, int, int] | None:
    """(segment, data offset, data length) of a message, or None if the index does not hold it."""
    row = conn.execute("SELECT seg, off, len FROM messages WHERE id=?", (int(message_id, 16),)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def soonest(conn: sqlite3.Connection, gen: int) -> float | None:
    """The earliest next attempt of the messages on disk only (None: there are none)."""
    row = conn.execute("SELECT next FROM messages WHERE res!=? ORDER BY next LIMIT 1", (gen,)).fetchone()
    return None if row is None else float(row[0])


def read_state(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT v FROM state WHERE k=?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


@dataclass(frozen=True)
class Aggregate:
    """Messages on disk only, per state, with the oldest `received_at` of each (None when none)."""

    due: int = 0
    deferred: int = 0
    oldest_due: float | None = None
    oldest_deferred: float | None = None


class AggregateReader:
    """Counts of the messages on disk only, on a read connection of its own (WAL lets it read beside the writer).

    One full pass over the `due` index, which covers every column the query needs: about a second per million
    queued messages, so the caller runs it on a thread and caches the result.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def read(self, now: float, gen: int) -> Aggregate:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False)
        rows = self._conn.execute(
            "SELECT next>?, count(*), min(received) FROM messages WHERE res!=? GROUP BY next>?", (now, gen, now)
        ).fetchall()
        got = {bool(later): (int(count), float(oldest)) for later, count, oldest in rows}
        due, deferred = got.get(False), got.get(True)
        return Aggregate(
            due=due[0] if due else 0,
            deferred=deferred[0] if deferred else 0,
            oldest_due=due[1] if due else None,
            oldest_deferred=deferred[1] if deferred else None,
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
