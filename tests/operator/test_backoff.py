"""The retry schedule of refused applies: doubling from 2 s, capped at 5 minutes."""

from __future__ import annotations

from relay_operator.backoff import MAX_DELAY, retry_delay


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    assert [retry_delay(r) for r in range(9)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert retry_delay(10_000) == MAX_DELAY
    assert retry_delay(-1) == 2
