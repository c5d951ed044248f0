"""Opening a spool: torn and corrupt tails, progress read back from the journal, the exclusive lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_relay.model.envelope import QueueState
from smtp_relay.queue.spool.records import SpoolError
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import envelope, segment_files


async def test_torn_and_corrupt_tails_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    kept = [await spool.commit(envelope(), f"message {i}".encode()) for i in range(3)]
    await spool.close()
    (segment,) = segment_files(root)
    good = segment.read_bytes()
    record_len = len(good) // 3

    # A crash mid-write: the last record is cut short, anywhere in its header, meta or data.
    for cut in (5, 30, record_len - 2):
        segment.write_bytes(good + good[:cut])
        again = Spool(root)
        assert [m.id for m in await again.open()] == [m.id for m in kept]
        await again.close()
        assert segment_files(root) == [segment]

    # A complete-looking record whose bytes were not all written (CRC mismatch).
    bad = bytearray(good[-record_len:])
    bad[-1] ^= 0xFF
    segment.write_bytes(good + bytes(bad))
    again = Spool(root)
    recovered = await again.open()
    assert [m.id for m in recovered] == [m.id for m in kept]
    assert [await again.read(m) for m in recovered] == [f"message {i}".encode() for i in range(3)]
    # Later commits go to a new segment, never behind the torn tail.
    later = await again.commit(envelope(), b"after the crash")
    await again.close()
    assert len(segment_files(root)) == 2
    final = Spool(root)
    assert [m.id for m in await final.open()] == [m.id for m in kept] + [later.id]
    await final.close()


async def test_partial_delivery_recovers_only_pending_recipients(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    partial = await spool.commit(envelope("a@example.net", "b@example.net", "c@example.net"), b"data")
    done = await spool.commit(envelope("d@example.net"), b"data")
    untouched = await spool.commit(envelope("e@example.net"), b"data")
    partial.attempts = 2
    partial.next_attempt = 1_700_000_300.0
    partial.last_error = "451 4.3.0 try again"
    spool.record_attempt(partial, ["a@example.net"])
    assert partial.pending == {"b@example.net", "c@example.net"}
    partial.attempts = 3
    spool.record_attempt(partial, ["c@example.net"])
    spool.finish(done)
    assert done.state is QueueState.DONE
    assert spool.depth() == 2
    await spool.close()

    again = Spool(root)
    recovered = {m.id: m for m in await again.open()}
    try:
        assert set(recovered) == {partial.id, untouched.id}
        got = recovered[partial.id]
        assert got.pending == {"b@example.net"}
        assert (got.attempts, got.next_attempt, got.last_error) == (3, 1_700_000_300.0, "451 4.3.0 try again")
        assert recovered[untouched.id].pending == {"e@example.net"}
        assert recovered[untouched.id].attempts == 0
    finally:
        await again.close()


async def test_spool_is_exclusive_and_refuses_after_close(tmp_path: Path) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    other = Spool(root)
    with pytest.raises(SpoolError, match="in use"):
        await other.open()
    await spool.close()
    with pytest.raises(SpoolError, match="not open"):
        await spool.commit(envelope(), b"x")
    assert await other.open() == []
    await other.close()
