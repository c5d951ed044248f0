"""Retry timing for temporary delivery failures.

Pure functions so the scheduler's timing can be tested without clocks, and so a config reload
(a new schedule) applies to the very next failure.
"""

from __future__ import annotations

from collections.abc import Sequence


def next_delay(schedule: Sequence[float], attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts: the n-th interval, then the last one repeats.

    No failure yet (attempts <= 0) means no wait, so a new message goes out at once.
    """
    if not schedule:
        raise ValueError("the retry schedule needs at least one interval")
    if attempts <= 0:
        return 0.0
    delay = float(schedule[min(attempts, len(schedule)) - 1])
    if delay < 0:
        raise ValueError(f"retry interval {delay} is negative")
    return delay


def expired(first_seen: float, now: float, max_age: float) -> bool:
    """Has a message been queued for `max_age` seconds or more (so it should bounce, not retry)?"""
    return now - first_seen >= max_age
