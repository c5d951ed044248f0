"""A message handed off by a draining relay keeps its arrival time and progress here, through any restart; the
scheduler lets go of the messages no attempt holds, so a drain can hand them off."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Envelope, Outcome, QueueState, StoredMessage
from smtp_relay.queue.spool.records import INDEX_NAME
from smtp_relay.queue.spool.store import Spool
from tests.relay.queue.conftest import FakeDelivery, relay, submit

RECEIVED = 1_700_000_000.0


async def _adopt(spool: Spool, next_attempt: float) -> StoredMessage:
    env = Envelope("alice@example.org", ("bob@example.net", "carol@example.net"), received_at=RECEIVED)
    return await spool.adopt(
        env, b"data", attempts=3, next_attempt=next_attempt, last_error="451 later", origin="relay-2:/s/0001"
    )


@pytest.mark.parametrize("index_lost", [False, True])
async def test_an_adopted_message_keeps_arrival_and_progress_after_a_restart(tmp_path: Path, index_lost: bool) -> None:
    root = tmp_path / "queue"
    spool = Spool(root)
    await spool.open()
    later = time.time() + 3600
    adopted = await _adopt(spool, later)
    assert (adopted.attempts, adopted.next_attempt, adopted.last_error) == (3, later, "451 later")
    assert adopted.envelope.received_at == RECEIVED, "the original arrival time, not the hand-off's"
    await spool.close()
    if index_lost:  # the record alone must carry the progress: the index may not have seen it (kill -9)
        for path in root.glob(INDEX_NAME + "*"):
            path.unlink()
    again = Spool(root)
    (recovered,) = await again.open()
    assert recovered.id == adopted.id and await again.read(recovered) == b"data"
    assert recovered.envelope.received_at == RECEIVED
    assert (recovered.attempts, recovered.next_attempt, recovered.last_error) == (3, later, "451 later")
    assert recovered.state is QueueState.DEFERRED
    assert recovered.pending == {"bob@example.net", "carol@example.net"}
    recovered.attempts, recovered.next_attempt = 4, later + 60
    again.record_attempt(recovered, ["bob@example.net"])  # progress made here wins over what it came with
    await again.close()
    if index_lost:
        for path in root.glob(INDEX_NAME + "*"):
            path.unlink()
    third = Spool(root)
    (last,) = await third.open()
    assert (last.attempts, last.next_attempt, last.pending) == (4, later + 60, {"carol@example.net"})
    await third.close()


async def test_take_idle_lets_go_of_what_no_attempt_holds(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow_first(message: StoredMessage, data: bytes, recipients: list[str]) -> dict[str, Outcome]:
        await release.wait()
        return {r: Outcome.delivered() for r in recipients}

    delivery = FakeDelivery(lambda m, r, n: {x: Outcome.temporary(451, "later") for x in r})
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1h"]), max_active=1) as (spool, scheduler, _):
        scheduler._deliver = slow_first  # the first message's attempt holds it; the others wait
        messages = [await submit(spool, scheduler, "bob@example.net") for _ in range(3)]
        await asyncio.sleep(0.05)
        assert scheduler.stats().total == 3
        taken = scheduler.take_idle(10, skip={messages[2].id})
        assert [m.id for m in taken] == [messages[1].id], "not the one in flight, not the one skipped"
        assert scheduler.stats().total == 2, "what was taken is no longer the scheduler's"
        assert spool.depth() == 3, "but still queued in the spool"
        scheduler.submit(taken[0])  # given back: it is delivered as any other
        release.set()
        for _ in range(100):
            if not spool.depth():
                break
            await asyncio.sleep(0.02)
        assert spool.depth() == 0


async def test_load_due_at_infinity_takes_deferred_messages_from_disk(tmp_path: Path) -> None:
    """The hand-off loads from disk whatever the next attempt: a deferred message is not due, yet it may go."""
    spool = Spool(tmp_path / "queue")
    await spool.open()
    adopted = await _adopt(spool, time.time() + 3600)
    spool.release(adopted)
    await spool.flush()
    assert await spool.load_due(time.time(), 10) == [], "not due"
    (loaded,) = await spool.load_due(math.inf, 10)
    assert loaded.id == adopted.id and loaded.attempts == 3
    await spool.close()
