"""Rate limits, the AUTH throttle and the connection limit: pure state machines on a fake clock."""

from __future__ import annotations

import pytest

from smtp_relay.config.policy_spec import RateLimit
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


def _attempt(throttle: AuthThrottle, client_ip: str, user: str) -> tuple[int, float] | None:
    """One AUTH as the listener runs it: None when refused before the check, else (reply code, delay) of a failure."""
    if throttle.before_auth(client_ip) is not None:
        return None
    throttle.reserve(client_ip)
    verdict, delay = throttle.failure(client_ip, user)
    return verdict.code, delay


def test_auth_throttle_delays_then_refuses_for_the_cooldown() -> None:
    clock = Clock()
    throttle = AuthThrottle(max_failures=5, delay_after=2, window=600, cooldown=900, max_delay=3, clock=clock)
    assert [_attempt(throttle, "192.0.2.1", "bob") for _ in range(4)] == [(535, 0), (535, 0), (535, 1), (535, 2)]
    assert _attempt(throttle, "192.0.2.1", "bob") == (454, 3)
    refused = throttle.before_auth("192.0.2.1")
    assert refused is not None and refused.reply == "454 4.7.0 Too many authentication failures, try again later"
    assert throttle.before_auth("192.0.2.2") is None  # only that client
    clock.now += 899
    assert throttle.before_auth("192.0.2.1") is not None
    clock.now += 1
    assert throttle.before_auth("192.0.2.1") is None


def test_a_successful_login_forgets_only_that_users_failures() -> None:
    throttle = AuthThrottle(max_failures=4, delay_after=1, clock=Clock())
    for user in ("alice", "bob", "bob"):
        _attempt(throttle, "192.0.2.1", user)
    throttle.reserve("192.0.2.1")
    throttle.success("192.0.2.1", "alice")  # alice's typo is forgiven, bob's guesses are not
    assert (throttle.failures("192.0.2.1"), throttle.failures("192.0.2.1", "bob")) == (2, 2)
    assert _attempt(throttle, "192.0.2.1", "bob") == (535, 2)
    assert _attempt(throttle, "192.0.2.1", "bob") == (454, 5)


def test_owning_one_account_buys_no_guesses_at_another() -> None:
    """The attack that worked: guess bob's password, log in as alice in between, guess again."""
    throttle = AuthThrottle(max_failures=10, clock=Clock())
    replies = []
    for _ in range(15):
        for _ in range(3):
            replies.append(_attempt(throttle, "192.0.2.1", "bob"))
        if throttle.before_auth("192.0.2.1") is None:
            throttle.reserve("192.0.2.1")
            throttle.success("192.0.2.1", "alice")
    assert [r[0] if r else None for r in replies[:10]] == [535] * 9 + [454]
    assert replies[10:] == [None] * 35  # refused before any password check


def test_attempts_under_way_count_against_the_limit() -> None:
    """Parallel AUTH lines: each is reserved before its check, so no more checks than the limit start."""
    throttle = AuthThrottle(max_failures=3, clock=Clock())
    reserved = 0
    for _ in range(10):
        if throttle.before_auth("192.0.2.1") is None:
            throttle.reserve("192.0.2.1")
            reserved += 1
    assert reserved == 3
    throttle.success("192.0.2.1", "alice")  # one check ends well: one attempt is free again
    assert throttle.before_auth("192.0.2.1") is None


def test_auth_records_are_bounded_and_forgotten() -> None:
    clock = Clock()
    throttle = AuthThrottle(max_failures=3, window=600, cooldown=900, clock=clock, max_keys=100)
    for n in range(300):
        _attempt(throttle, f"10.0.{n // 256}.{n % 256}", "x" * 10_000)
    assert len(throttle._records) == 100
    assert all(len(user) <= 256 for record in throttle._records.values() for _, user in record.failures)
    clock.now += 600
    assert throttle.failures("10.0.1.43") == 0 and "10.0.1.43" not in throttle._records


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
