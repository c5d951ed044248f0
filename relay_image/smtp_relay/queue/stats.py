"""Queue statistics: messages per queue state and the oldest one's age, for /queue and the gauges.

The messages in memory are counted one by one; those on disk only come from a count of the index."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from smtp_relay.model.envelope import QueueState, StoredMessage
from smtp_relay.queue.spool.index import Aggregate
from smtp_relay.telemetry.metrics import RelayMetrics


@dataclass(frozen=True)
class QueueStats:
    """Messages per queue state and the age of the oldest one in each (0 when none)."""

    active: int = 0
    """Messages due now or being delivered."""
    deferred: int = 0
    """Messages waiting for their next attempt."""
    oldest_active_age: float = 0.0
    oldest_deferred_age: float = 0.0

    @property
    def total(self) -> int:
        return self.active + self.deferred


def queue_stats(messages: Iterable[StoredMessage], now: float) -> QueueStats:
    """Count `messages` per state (anything not deferred is active) with their oldest age at `now`."""
    counts = {QueueState.ACTIVE: 0, QueueState.DEFERRED: 0}
    oldest = {QueueState.ACTIVE: 0.0, QueueState.DEFERRED: 0.0}
    for message in messages:
        state = QueueState.DEFERRED if message.state is QueueState.DEFERRED else QueueState.ACTIVE
        counts[state] += 1
        oldest[state] = max(oldest[state], now - message.envelope.received_at)
    return QueueStats(
        active=counts[QueueState.ACTIVE],
        deferred=counts[QueueState.DEFERRED],
        oldest_active_age=oldest[QueueState.ACTIVE],
        oldest_deferred_age=oldest[QueueState.DEFERRED],
    )


def set_queue_gauges(metrics: RelayMetrics, stats: QueueStats) -> None:
    """Push `stats` into the per-state queue gauges."""
    for state, count, oldest in (
        (QueueState.ACTIVE, stats.active, stats.oldest_active_age),
        (QueueState.DEFERRED, stats.deferred, stats.oldest_deferred_age),
    ):
        metrics.queue_depth.labels(state=state.value).set(count)
        metrics.queue_oldest.labels(state=state.value).set(oldest)


def with_on_disk(resident: QueueStats, aggregate: Aggregate, on_disk: int, now: float) -> QueueStats:
    """`resident` (exact, from memory) plus the `on_disk` messages not in memory, split per state as the last
    count of the index (`aggregate`) says; that count may be a few seconds old, the total never is."""
    if on_disk <= 0:
        return resident
    deferred = min(aggregate.deferred, on_disk)
    active = on_disk - deferred

    def age(oldest: float | None) -> float:
        return max(0.0, now - oldest) if oldest is not None else 0.0

    return QueueStats(
        active=resident.active + active,
        deferred=resident.deferred + deferred,
        oldest_active_age=max(resident.oldest_active_age, age(aggregate.oldest_due) if active else 0.0),
        oldest_deferred_age=max(resident.oldest_deferred_age, age(aggregate.oldest_deferred) if deferred else 0.0),
    )
