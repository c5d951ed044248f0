"""The index is off the commit path: a 250 waits only for its segment's fdatasync, never for SQLite, and what the
index has not written yet (a kill -9 after the 250) is found again in the segment's tail."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from smtp_relay.queue.spool import index
from smtp_relay.queue.spool.records import INDEX_NAME, JOURNAL_MAGIC, JOURNAL_NAME, scan
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import envelope


def index_rows(root: Path) -> tuple[set[str], dict[int, int]]:
    """The queue ids the index holds and its segments' indexed offsets, read beside the spool (WAL allows it)."""
    conn = sqlite3.connect(f"file:{root / INDEX_NAME}?mode=ro", uri=True)
    try:
        ids = {f"{row[0]:014X}" for row in conn.execute("SELECT id FROM messages")}
        segments = {int(seg): int(end) for seg, end in conn.execute("SELECT seg, indexed FROM segments")}
        return ids, segments
    finally:
        conn.close()


class BlockedIndex:
    """Stands in for `index.apply`: every call waits until `release`, as an index on a stalled disk would."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.real = index.apply

    def __call__(self, conn: sqlite3.Connection, ops: Sequence[index.Op]) -> None:
        self.entered.set()
        assert self.released.wait(30), "the test never released the index"
        self.real(conn, ops)


async def polled(predicate: Callable[[], bool]) -> None:
    """Wait until a state set by another thread, or written to disk, holds (neither can set an asyncio.Event)."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the index thread and the files are what is polled
            await asyncio.sleep(0.01)


@pytest.fixture
def blocked() -> Iterator[BlockedIndex]:
    blocker = BlockedIndex()
    yield blocker
    blocker.released.set()


async def test_commits_complete_while_the_index_is_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: BlockedIndex
) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, journal_delay=0.0)
    await spool.open()
    monkeypatch.setattr(index, "apply", blocked)
    try:
        first = await spool.commit(envelope(), b"first")
        await polled(blocked.entered.is_set)  # the index is now stuck writing the first row
        async with asyncio.timeout(10):
            later = await asyncio.gather(*(spool.commit(envelope(f"r{i}@x.net"), b"later" * 100) for i in range(20)))
            spool.finish(later[0])
            later[1].attempts = 1
            spool.record_attempt(later[1], [])
            await asyncio.sleep(0.1)  # journal housekeeping runs between commits, with the index still blocked
            more = await spool.commit(envelope(), b"more")
        stored = [first, *later, more]
        assert spool.depth() == 21
        assert [await spool.read(m) for m in (first, later[5], more)] == [b"first", b"later" * 100, b"more"]
        assert index_rows(root)[0] == set(), "the index was blocked: none of the rows may be written yet"
    finally:
        blocked.released.set()
    await spool.flush()
    assert index_rows(root)[0] == {m.id for m in stored} - {later[0].id}
    await spool.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys, threading
    from pathlib import Path
    from smtp_relay.model.envelope import Envelope
    from smtp_relay.queue.spool import index
    from smtp_relay.queue.spool.store import Spool

    async def main() -> None:
        spool = Spool(Path(sys.argv[1]), journal_delay=0.0, segment_max_bytes=8192)
        await spool.open()
        stalled = threading.Event()
        index.apply = lambda conn, ops: stalled.wait()  # the index never gets to write anything
        async def one(i: int) -> None:
            data = f"message {i} ".encode() * 100
            message = await spool.commit(Envelope("a@x.org", (f"r{i}@y.org",), received_at=1.0), data)
            print("C", message.id, len(data), flush=True)  # the 250
        for wave in range(5):  # batches one after the other, each while the index is stuck
            await asyncio.gather(*(one(8 * wave + i) for i in range(8)))
            await asyncio.sleep(0.05)
        print("READY", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_kill_9_after_the_250_before_the_index_write_recovers_from_the_segment_tail(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(root), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    acknowledged: dict[str, int] = {}
    try:
        async with asyncio.timeout(30):
            while True:
                line = await child.stdout.readline()
                assert line, (await child.stderr.read()).decode()
                parts = line.decode().split()
                if parts == ["READY"]:
                    break
                acknowledged[parts[1]] = int(parts[2])
        ids, segments = index_rows(root)
        assert ids == set() and all(end == 0 for end in segments.values()), "the index must have written nothing"
    finally:
        child.kill()
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) == 40

    spool = Spool(root)
    recovered = {m.id: m for m in await spool.open()}
    try:
        assert set(recovered) == set(acknowledged)
        for message_id, size in acknowledged.items():
            assert len(await spool.read(recovered[message_id])) == size
        assert index_rows(root)[0] == set(acknowledged)  # and recovery put them into the index
    finally:
        await spool.close()


class Recorder:
    """Wraps `index.apply`, keeping every statement applied after open."""

    def __init__(self) -> None:
        self.real = index.apply
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def __call__(self, conn: sqlite3.Connection, ops: Sequence[index.Op]) -> None:
        self.ops.extend(ops)
        self.real(conn, ops)

    def touching(self, message_id: str) -> list[str]:
        number = int(message_id, 16)
        return [sql for sql, params in self.ops if sql in (index.INSERT, index.DELETE) and params[0] == number]


async def test_a_message_finished_before_its_row_was_written_costs_the_index_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, journal_delay=3600.0)
    await spool.open()
    recorder = Recorder()
    monkeypatch.setattr(index, "apply", recorder)
    stored = [await spool.commit(envelope(f"r{i}@x.net"), f"body {i}".encode()) for i in range(10)]
    for message in stored[:6]:
        spool.finish(message)
    await spool.flush()
    assert all(recorder.touching(m.id) == [] for m in stored[:6])
    assert all(recorder.touching(m.id) == [index.INSERT] for m in stored[6:])
    spool.finish(stored[6])  # its row is written now: this one is deleted
    await spool.close()
    assert recorder.touching(stored[6].id) == [index.INSERT, index.DELETE]
    assert index_rows(root)[0] == {m.id for m in stored[7:]}

    again = Spool(root)
    try:
        recovered = await again.open()
        assert [m.id for m in recovered] == [m.id for m in stored[7:]]  # the finished ones are not read back
        assert [await again.read(m) for m in recovered] == [f"body {i}".encode() for i in range(7, 10)]
    finally:
        await again.close()


def journal_ids(root: Path) -> list[str]:
    frames, _ = scan(root / JOURNAL_NAME, JOURNAL_MAGIC)
    return [entry["i"] for frame in frames for entry in json.loads(frame.meta)]


async def test_the_journal_is_emptied_only_of_what_a_finished_checkpoint_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: BlockedIndex
) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, journal_delay=0.0, journal_compact_bytes=1000)
    await spool.open()
    stored = [await spool.commit(envelope(f"r{i}@x.net"), b"x") for i in range(60)]
    await spool.flush()
    monkeypatch.setattr(index, "apply", blocked)
    try:
        for message in stored[:30]:  # one journal write of over 1,000 bytes: a checkpoint is asked for, and blocks
            message.attempts, message.last_error = 1, "451 try later"
            spool.record_attempt(message, [])
        await polled(lambda: len(journal_ids(root)) == 30 and blocked.entered.is_set())
        async with asyncio.timeout(10):
            for message in stored[30:40]:  # after the cut, while the checkpoint waits
                spool.finish(message)
                await asyncio.sleep(0.01)
            await spool.commit(envelope(), b"a commit is not held up by the checkpoint")
        assert set(journal_ids(root)) == {m.id for m in stored[:40]}  # nothing dropped before the checkpoint
    finally:
        blocked.released.set()
    # Rewritten after the checkpoint: only what was journaled after the cut is kept.
    await polled(lambda: set(journal_ids(root)) == {m.id for m in stored[30:40]})
    await spool.close()

    again = Spool(root)
    try:
        recovered = {m.id: m for m in await again.open()}
        assert set(recovered) >= {m.id for m in stored[:30] + stored[40:]}
        assert not set(recovered) & {m.id for m in stored[30:40]}
        assert all(recovered[m.id].attempts == 1 for m in stored[:30])
    finally:
        await again.close()


async def test_a_failing_index_write_is_retried_in_order_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, journal_delay=0.0)
    await spool.open()
    real = index.apply
    failing = True

    def flaky(conn: sqlite3.Connection, ops: Sequence[index.Op]) -> None:
        if failing:
            raise sqlite3.OperationalError("disk I/O error")
        real(conn, ops)

    monkeypatch.setattr(index, "apply", flaky)
    try:
        stored = [await spool.commit(envelope(f"r{i}@x.net"), b"kept") for i in range(5)]
        await spool.flush()
        stored[0].attempts = 3
        spool.record_attempt(stored[0], [])
        await spool.flush()
        assert index_rows(root)[0] == set()
        failing = False
        await spool.flush()
        assert index_rows(root)[0] == {m.id for m in stored}
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "index write failed" in r.getMessage()]
        assert len(errors) == 1
        conn = sqlite3.connect(f"file:{root / INDEX_NAME}?mode=ro", uri=True)
        try:  # the progress statement queued after the failed inserts was applied after them, not lost
            ((attempts,),) = conn.execute("SELECT attempts FROM messages WHERE id=?", (int(stored[0].id, 16),))
        finally:
            conn.close()
        assert attempts == 3
    finally:
        failing = False
        await spool.close()
