"""The active window: at most `active_window` messages in memory, the rest on disk in the index and loaded
when due; recovery reads the index and the segments' unindexed tails, never every record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Outcome, QueueState, StoredMessage
from smtp_relay.queue.spool import recovery
from smtp_relay.queue.spool.records import INDEX_NAME, Frame
from smtp_relay.queue.spool.store import Spool
from smtp_relay.queue.window import evict_count, pick_evictions, refill_size
from tests.relay.queue.conftest import START, FakeDelivery, deliver_all, envelope, relay, segment_files, submit, until
from tests.relay.queue.test_spool_records import frame


@pytest.mark.looptime(start=START)
async def test_memory_holds_only_the_window_and_everything_is_delivered(tmp_path: Path) -> None:
    down = True

    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        return {r: Outcome.temporary(451, "4.4.1 upstream down") if down else Outcome.delivered() for r in rcpts}

    delivery = FakeDelivery(script)
    resident: list[int] = []
    async with relay(tmp_path, delivery, RetrySpec(schedule=["10m"]), active_window=5) as (spool, sched, _):
        for i in range(40):
            await submit(spool, sched, f"r{i}@x.net")
            resident.append(spool.resident())
        assert spool.depth() == 40
        await asyncio.sleep(120)  # every message gets its first attempt, five at a time
        assert len({c.message.id for c in delivery.calls}) == 40
        assert max(resident) <= 5 and spool.resident() <= 5
        stats = sched.stats()
        assert (stats.total, stats.deferred, stats.active) == (40, 40, 0)
        assert stats.oldest_deferred_age == pytest.approx(120, abs=3)
        down = False
        failed_calls = len(delivery.calls)
        await until(lambda: spool.depth() == 0, delivery)
        assert len({c.message.id for c in delivery.calls[failed_calls:]}) == 40
        assert sched.stats().total == 0


@pytest.mark.looptime(start=START)
async def test_due_messages_on_disk_take_the_place_of_deferred_ones(tmp_path: Path) -> None:
    """A window full of messages deferred for hours must not starve due mail waiting on disk."""

    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        late = rcpts[0].startswith("late")
        return {r: Outcome.temporary(451, "later") if late else Outcome.delivered() for r in rcpts}

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["6h"]), active_window=4) as (spool, sched, _):
        for i in range(4):
            await submit(spool, sched, f"late{i}@x.net")
        await until(lambda: len(delivery.calls) == 4, delivery)
        assert sched.stats().deferred == 4 and spool.on_disk() == 0  # kept: nothing waited on disk
        for i in range(6):
            await submit(spool, sched, f"now{i}@x.net")  # the window is full: these wait on disk
        await until(lambda: spool.depth() == 4, delivery)
        assert asyncio.get_running_loop().time() - START < 60
        assert sorted(c.recipients[0] for c in delivery.calls[4:]) == [f"now{i}@x.net" for i in range(6)]
        assert spool.resident() <= 4


async def test_recovery_hands_out_the_window_and_leaves_the_rest_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, active_window=10)
    await spool.open()
    stored = [await spool.commit(envelope(f"r{i}@x.net"), f"body {i}".encode()) for i in range(50)]
    stored[3].attempts, stored[3].next_attempt, stored[3].last_error = 2, 4_000_000_000.0, "451 busy"
    spool.record_attempt(stored[3], [])
    for message in stored[10:]:
        spool.release(message)
    spool.finish(stored[0])
    await spool.close()

    again = Spool(root, active_window=10)
    first = await again.open()
    try:
        assert len(first) == 10 and again.depth() == 49 and again.on_disk() == 39
        assert stored[3].id not in {m.id for m in first}  # due ones first: it is deferred for years
        loaded: list[StoredMessage] = []
        while len(loaded) < 38:
            batch = await again.load_due(3_000_000_000.0, 7)
            assert batch and len(batch) <= 7
            loaded += batch
        assert await again.load_due(3_000_000_000.0, 7) == []  # the deferred one is not due yet
        (late,) = await again.load_due(4_000_000_000.0, 7)
        assert (late.id, late.attempts, late.last_error, late.state) == (stored[3].id, 2, "451 busy", QueueState.ACTIVE)
        ids = {m.id for m in first + loaded} | {late.id}
        assert ids == {m.id for m in stored[1:]}
        bodies = {m.id: f"body {i}".encode() for i, m in enumerate(stored)}
        assert [await again.read(m) for m in loaded] == [bodies[m.id] for m in loaded]
    finally:
        await again.close()


async def test_recovery_reads_only_the_unindexed_tails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, segment_max_bytes=2000, journal_delay=3600.0)
    await spool.open()
    for i in range(30):
        await spool.commit(envelope(f"r{i}@x.net"), b"x" * 500)
    await spool.close()  # the index is complete and durable
    scans: list[tuple[str, int, int]] = []
    real_scan = recovery.scan

    def counting_scan(path: Path, magic: bytes, start: int = 0) -> tuple[list[Frame], int]:
        scans.append((path.name, start, path.stat().st_size))
        return real_scan(path, magic, start)

    monkeypatch.setattr(recovery, "scan", counting_scan)
    again = Spool(root, segment_max_bytes=2000)
    assert len(await again.open()) == 30
    await again.close()
    assert len(segment_files(root)) > 5
    assert all(start == size for _, start, size in scans), scans  # at most the empty tail of each segment
    assert (root / INDEX_NAME).exists()


async def test_index_lost_with_its_last_transactions_is_rebuilt_from_segment_tails(tmp_path: Path) -> None:
    """As after a power loss that took the index's last transactions: the messages are found in the tails."""
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    before = [await spool.commit(envelope(), b"early") for _ in range(3)]
    await spool.close()
    saved = (root / INDEX_NAME).read_bytes()
    again = Spool(root)
    await again.open()
    after = [await again.commit(envelope(), b"late") for _ in range(4)]
    again.finish(before[1])
    await again.close()
    (root / INDEX_NAME).write_bytes(saved)  # the index as it was before the second run
    for suffix in ("-wal", "-shm"):
        (root / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    final = Spool(root)
    recovered = await final.open()
    try:
        assert [m.id for m in recovered] == [before[0].id, before[2].id] + [m.id for m in after]
        assert [await final.read(m) for m in recovered] == [b"early"] * 2 + [b"late"] * 4
    finally:
        await final.close()


@pytest.mark.looptime(start=START)
async def test_drain_delivers_what_waits_on_disk(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        return {r: Outcome.delivered() if n >= 1 else Outcome.temporary(451, "once") for r in rcpts}

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1h"]), active_window=3) as (spool, sched, _):
        for i in range(12):
            await submit(spool, sched, f"r{i}@x.net")
        await until(lambda: len(delivery.calls) == 12, delivery)
        assert spool.depth() == 12
        assert await sched.drain(60) == 0
        assert len(delivery.calls) == 24
        assert asyncio.get_running_loop().time() - START < 3600


@pytest.mark.looptime(start=START)
async def test_a_restart_with_more_than_the_window_delivers_everything(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, active_window=4)
    await spool.open()
    for i in range(25):
        message = await spool.commit(envelope(f"r{i}@x.net"), b"queued")
        if spool.resident() > 4:
            spool.release(message)
    await spool.close()
    delivery = FakeDelivery(deliver_all)
    async with relay(tmp_path, delivery, RetrySpec(), active_window=4) as (spool, _sched, _):
        assert spool.depth() == 25 and spool.resident() == 4
        await until(lambda: spool.depth() == 0, delivery)
        assert sorted(c.recipients[0] for c in delivery.calls) == sorted(f"r{i}@x.net" for i in range(25))
        assert delivery.max_in_flight <= 4


def test_refill_waits_for_room_unless_idle_and_evicts_only_what_it_needs() -> None:
    assert refill_size(1000, 990, 50, idle=False) == 0  # 10 free: wait for a batch's worth
    assert refill_size(1000, 990, 50, idle=True) == 10
    assert refill_size(1000, 800, 50, idle=False) == 50
    assert refill_size(1000, 0, 5000, idle=False) == 1000
    assert refill_size(10, 10, 5, idle=True) == 0
    assert evict_count(10, 10, 5) == 1 and evict_count(1000, 1000, 5000) == 100 and evict_count(1000, 500, 10) == 0
    messages = [
        StoredMessage(f"{i:014X}", envelope(), 1, {"b@x"}, next_attempt=100.0 + i, state=QueueState.DEFERRED)
        for i in range(5)
    ]
    messages.append(StoredMessage("AA", envelope(), 1, {"b@x"}, next_attempt=0.0, state=QueueState.ACTIVE))
    picked = pick_evictions(messages, 2, now=50.0, busy={messages[4].id})
    assert [m.id for m in picked] == [messages[3].id, messages[2].id]


async def test_a_spool_from_before_the_index_is_indexed_once_then_opens_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "queue"
    root.mkdir()

    def record(message_id: str, *rcpts: str) -> bytes:
        env = {"mail_from": "s@example.org", "rcpt_tos": list(rcpts), "received_at": 1.0}
        return frame(b"RFS1", json.dumps({"id": message_id, "env": env}).encode(), f"data {message_id}".encode())

    records = [record(f"{i:014X}", f"r{i}@x.net", "z@x.net") for i in range(1, 6)]
    (root / "seg-0000000003.dat").write_bytes(b"".join(records))
    progress = [{"i": f"{2:014X}", "s": ["z@x.net"], "a": 1, "n": 9.0, "e": "451 later"}, {"i": f"{4:014X}", "d": 1}]
    (root / "journal").write_bytes(frame(b"RFJ1", json.dumps(progress).encode()))
    assert not (root / INDEX_NAME).exists()

    first = Spool(root)
    migrated = {m.id: m for m in await first.open()}
    await first.close()
    assert sorted(migrated) == [f"{i:014X}" for i in (1, 2, 3, 5)]
    assert migrated[f"{2:014X}"].pending == {"r2@x.net"} and migrated[f"{2:014X}"].attempts == 1
    assert (root / "journal").stat().st_size == 0  # all of it is in the index now

    scans: list[str] = []
    real_scan = recovery.scan

    def counting_scan(path: Path, magic: bytes, start: int = 0) -> tuple[list[Frame], int]:
        scans.append(path.name)
        return real_scan(path, magic, start)

    monkeypatch.setattr(recovery, "scan", counting_scan)
    second = Spool(root)
    again = {m.id: m for m in await second.open()}
    try:
        assert scans == ["journal"]  # the segment is not read again: the index holds all of it
        assert {i: (m.pending, m.attempts, m.last_error) for i, m in again.items()} == {
            i: (m.pending, m.attempts, m.last_error) for i, m in migrated.items()
        }
        assert await second.read(again[f"{5:014X}"]) == f"data {5:014X}".encode()
    finally:
        await second.close()
