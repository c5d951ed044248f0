"""The active window's decisions, pure so they can be tested without a spool or a clock: how many messages to
load from disk, which deferred ones to let go for them, and how often to count what is on disk.

Postfix's model (`qmgr_message_active_limit`): a bounded active queue in memory over the on-disk queue. The
scheduler holds at most `window` messages; the rest are rows of the spool's index, loaded when due.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from smtp_relay.model.envelope import QueueState, StoredMessage

REFILL_BATCH = 1000
"""Most messages loaded from the index at once (one query and its decoding on the writer thread)."""
DISK_POLL = 1.0
"""Seconds between looks at the index while nothing there was due: commits reach it lazily."""
AGGREGATE_MIN_INTERVAL = 2.0
AGGREGATE_COST_FACTOR = 20.0
"""Counting what is on disk takes at most 1/20 of the time: the figures are that much behind at most."""


def refill_size(window: int, in_memory: int, on_disk: int, *, idle: bool) -> int:
    """Messages to load now: nothing while the free room is small (loads are batched) and cannot take all that
    waits, unless nothing is ready to run (`idle`), then whatever fits."""
    room = max(0, window - in_memory)
    want = min(room, on_disk, REFILL_BATCH)
    threshold = max(1, min(REFILL_BATCH, window // 10))
    return want if want >= min(threshold, on_disk) or (idle and want > 0) else 0


def evict_count(window: int, in_memory: int, on_disk: int) -> int:
    """Deferred messages to let go so that due ones on disk get a place (the window is full)."""
    room = max(0, window - in_memory)
    want = min(on_disk, REFILL_BATCH, max(1, window // 10))
    return max(0, want - room)


def pick_evictions(messages: Iterable[StoredMessage], count: int, now: float, busy: set[str]) -> list[StoredMessage]:
    """The `count` deferred messages (not in flight) whose next attempt is furthest away."""
    if count <= 0:
        return []
    deferred = (m for m in messages if m.state is QueueState.DEFERRED and m.next_attempt > now and m.id not in busy)
    return heapq.nlargest(count, deferred, key=lambda m: m.next_attempt)


def soonest_deferred(messages: Iterable[StoredMessage], *, default: float) -> float:
    """The earliest next attempt of the deferred messages in the window (`default` when none is deferred)."""
    return min((m.next_attempt for m in messages if m.state is QueueState.DEFERRED), default=default)


def aggregate_interval(last_cost: float) -> float:
    """Seconds until the on-disk figures are counted again, after a count that took `last_cost` seconds."""
    return max(AGGREGATE_MIN_INTERVAL, AGGREGATE_COST_FACTOR * last_cost)
