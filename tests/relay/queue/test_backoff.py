"""Retry timing: the n-th interval, then the last one repeats; expiry at maxAge."""

from __future__ import annotations

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.config.units import parse_duration
from smtp_relay.queue.backoff import expired, next_delay


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0.0), (1, 60.0), (2, 300.0), (3, 900.0), (4, 3600.0), (5, 14400.0), (6, 14400.0), (50, 14400.0)],
)
def test_default_schedule_steps_then_repeats_last(attempts: int, expected: float) -> None:
    schedule = [parse_duration(s) for s in RetrySpec().schedule]
    assert next_delay(schedule, attempts) == expected


def test_single_interval_repeats() -> None:
    assert [next_delay([30.0], n) for n in (1, 2, 9)] == [30.0, 30.0, 30.0]


def test_empty_or_negative_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        next_delay([], 1)
    with pytest.raises(ValueError, match="negative"):
        next_delay([-1.0], 1)


def test_expired_at_and_after_max_age() -> None:
    assert not expired(1000.0, 1000.0 + 299.9, 300.0)
    assert expired(1000.0, 1300.0, 300.0)
    assert expired(1000.0, 5000.0, 300.0)
