"""Rate limits, the AUTH throttle and the connection limit: pure state machines on a fake clock."""

from __future__ import annotations

import pytest

from smtp_relay.config.spec import RateLimit
from smtp_relay.policy.ratelimit import AuthThrottle, ConnectionLimiter, RateLimiter, SlidingWindow, limit_key


class Clock:
    """Virtual time for the pure state machines."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sliding_window_slides_instead_of_resetting() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock)
    window.hit("k", 6)
    clock.now += 60  # a new bucket starts: all six events still count with full weight
    assert window.count("k") == pytest.approx(6)
    clock.now += 30  # half of the previous bucket is still in the window
    assert window.count("k") == pytest.approx(3)
    clock.now += 30
    assert window.count("k") == 0


def test_sliding_window_keeps_memory_bounded() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock, max_keys=100)
    for i in range(1000):
        window.hit(f"client-{i}")
    assert len(window) == 100
    assert window.count("client-999") == 1 and window.count("client-0") == 0


def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock)
    window.hit("old")
    clock.now += 121
    window.hit("new")
    assert len(window) == 1


@pytest.mark.parametrize(
    ("key", "expected"),
    [("client", "192.0.2.1"), ("user", "alice"), ("sender", "bob@example.com"), ("senderDomain", "example.com")],
)
def test_limit_keys(key: str, expected: str) -> None:
    limit = RateLimit(key=key, limit=1)
    assert limit_key(limit, "192.0.2.1", "alice", "Bob@Example.com") == expected


def test_limits_that_do_not_apply() -> None:
    assert limit_key(RateLimit(key="user", limit=1), "192.0.2.1", None, "a@b.c") is None
    assert limit_key(RateLimit(key="senderDomain", limit=1), "192.0.2.1", None, "") is None
    assert limit_key(RateLimit(key="sender", limit=1), "192.0.2.1", None, "") == "<>"
    assert limit_key(RateLimit(key="sender", limit=1), "192.0.2.1", None, None) is None


def test_rate_limit_defers_with_451_until_the_window_slides() -> None:
    clock = Clock()
    limiter = RateLimiter([RateLimit(key="senderDomain", limit=3, per="1m")], clock)
    for _ in range(3):
        assert limiter.check("192.0.2.1", None, "a@example.com") is None  # MAIL: room left
        assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None  # end of DATA: counted
    verdict = limiter.check("192.0.2.9", None, "other@EXAMPLE.com")
    assert verdict is not None
    assert verdict.reply == "451 4.7.1 Rate limit exceeded for senderDomain (3 per 1m), try again later"
    assert verdict.reason == "ratelimit_senderDomain"
    assert limiter.check("192.0.2.1", None, "a@other.example") is None  # other domains are not affected
    clock.now += 100  # 1/3 of the old bucket left in the window: 1 counted, room for 2
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is not None


def test_a_deferred_message_is_not_counted() -> None:
    limiter = RateLimiter([RateLimit(key="client", limit=1, per="1h")], Clock())
    assert limiter.check("192.0.2.1", None, "a@b.c", cost=1) is None
    for _ in range(5):
        assert limiter.check("192.0.2.1", None, "a@b.c", cost=1) is not None
    assert limiter.check("192.0.2.2", None, "a@b.c", cost=1) is None


def test_the_first_exhausted_of_several_limits_decides() -> None:
    limiter = RateLimiter([RateLimit(key="client", limit=5), RateLimit(key="user", limit=2)], Clock())
    assert limiter.check("192.0.2.1", "alice", "a@b.c", cost=2) is None
    verdict = limiter.check("192.0.2.1", "alice", "a@b.c")
    assert verdict is not None and verdict.reason == "ratelimit_user"
    assert limiter.check("192.0.2.1", None, "a@b.c") is None  # unauthenticated: only the client limit applies


def test_auth_throttle_delays_then_refuses_for_the_cooldown() -> None:
    clock = Clock()
    throttle = AuthThrottle(max_failures=5, delay_after=2, window=600, cooldown=900, max_delay=3, clock=clock)
    delays = []
    for _ in range(4):
        assert throttle.before_auth("192.0.2.1") is None
        verdict, delay = throttle.failure("192.0.2.1")
        assert verdict.reply == "535 5.7.8 Authentication credentials invalid"
        delays.append(delay)
    assert delays == [0, 0, 1, 2]
    verdict, delay = throttle.failure("192.0.2.1")
    assert (verdict.code, verdict.status, delay) == (454, "4.7.0", 3)
    refused = throttle.before_auth("192.0.2.1")
    assert refused is not None and refused.reply == "454 4.7.0 Too many authentication failures, try again later"
    assert throttle.before_auth("192.0.2.2") is None  # only that client
    clock.now += 899
    assert throttle.before_auth("192.0.2.1") is not None
    clock.now += 1
    assert throttle.before_auth("192.0.2.1") is None


def test_a_successful_login_clears_the_failures() -> None:
    throttle = AuthThrottle(max_failures=3, delay_after=1, clock=Clock())
    throttle.failure("192.0.2.1")
    throttle.failure("192.0.2.1")
    throttle.success("192.0.2.1")
    _, delay = throttle.failure("192.0.2.1")
    assert delay == 0
    assert throttle.before_auth("192.0.2.1") is None


def test_connection_limit_per_client() -> None:
    limiter = ConnectionLimiter()
    for _ in range(2):
        limiter.opened("192.0.2.1")
        assert limiter.refusal("192.0.2.1", limit=2) is None
    limiter.opened("192.0.2.1")
    refused = limiter.refusal("192.0.2.1", limit=2)
    assert refused is not None and refused.reply == "421 4.7.0 Too many connections from your host, try again later"
    assert limiter.refusal("192.0.2.2", limit=2) is None
    limiter.closed("192.0.2.1")
    assert limiter.refusal("192.0.2.1", limit=2) is None
    for _ in range(3):
        limiter.closed("192.0.2.1")
    assert limiter.open_connections("192.0.2.1") == 0


def test_connection_refusal_counts_nothing() -> None:
    limiter = ConnectionLimiter()
    limiter.opened("192.0.2.1")
    for _ in range(3):
        assert limiter.refusal("192.0.2.1", limit=1) is None
        assert limiter.refusal("192.0.2.2", limit=1) is None
    assert (limiter.open_connections("192.0.2.1"), limiter.open_connections("192.0.2.2")) == (1, 0)
    limiter.opened("192.0.2.1")
    refused = limiter.refusal("192.0.2.1", limit=1)
    assert refused is not None and refused.code == 421
    assert limiter.open_connections("192.0.2.1") == 2
