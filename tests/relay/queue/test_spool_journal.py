"""Journal housekeeping: delivered segments are removed and the journal is compacted, not grown."""

from __future__ import annotations

import asyncio
from pathlib import Path

from smtp_relay.queue.spool.records import JOURNAL_NAME
from smtp_relay.queue.spool.recovery import iter_segment_records
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import envelope, segment_files


async def test_finished_segments_are_removed_and_journal_stays_small(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, segment_max_bytes=1000, journal_compact_bytes=4096, journal_delay=0.0)
    await spool.open()
    first = [await spool.commit(envelope(), b"x" * 1500) for _ in range(3)]
    assert len(segment_files(root)) == 3  # each batch found the segment full and rotated
    assert spool.disk_bytes() > 3 * 1500
    spool.finish(first[1])
    await spool.flush()
    assert len(segment_files(root)) == 2
    assert spool.segment_count() == 2

    # Finishing the current segment's messages rotates it away too (it is beyond the idle size).
    spool.finish(first[0])
    spool.finish(first[2])
    await spool.flush()
    assert segment_files(root) == []

    # Many messages through a small spool: the journal is compacted, not grown forever.
    for round_ in range(20):
        batch = await asyncio.gather(*(spool.commit(envelope(f"r{round_}-{i}@x.net"), b"y" * 100) for i in range(20)))
        for message in batch:
            message.attempts = 1
            spool.record_attempt(message, [])
            spool.finish(message)
        await spool.flush()
    assert spool.depth() == 0
    assert (root / JOURNAL_NAME).stat().st_size < 3 * 4096
    await spool.close()
    assert segment_files(root) == []
    again = Spool(root)
    assert await again.open() == []
    await again.close()


async def test_idle_current_segment_is_rotated_away_once_delivered(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root, segment_max_bytes=4096, journal_delay=0.0)
    await spool.open()
    try:
        message = await spool.commit(envelope(), b"z" * 5000)
        small = await spool.commit(envelope(), b"small")  # goes to a new segment: the first one is full
        spool.finish(small)
        await spool.flush()
        assert len(segment_files(root)) == 2  # the small segment is below the idle rotation size
        spool.finish(message)
        await spool.flush()
        (left,) = segment_files(root)
        assert [r[0] for r in iter_segment_records(left)] == [small.id]
    finally:
        await spool.close()
