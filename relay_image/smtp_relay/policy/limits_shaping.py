"""Fleet-wide traffic-shaping rates (`spec.limits.backend: redis`): delivery's `SharedPacing` in Redis.

Every pod and worker of the SmtpRelay paces a destination's messagesPerMinute/messagesPerHour in one GCRA in
Redis (policy.limits_scripts.PACE, one script per admission, pipelined with the other decisions of the loop
pass), so three pods keep one rate, not three. It shares the rate limits' `RedisHealth`: one Redis, one
fallback, logged once per transition. While Redis is down (or a decision fails) the answer is None and the
gate paces locally with each rate divided by replicas x workers: shaping then only waits longer, it never
stops delivering. Connections and the adaptive back-off stay per process (delivery/shaper.py).
"""

from __future__ import annotations

from smtp_relay.delivery.shaper import Pace
from smtp_relay.policy.limits_fleet import RedisHealth
from smtp_relay.policy.limits_redis import RedisUnavailable


def rate_names(base_intervals: tuple[float, ...]) -> list[str]:
    """A Redis key part per configured rate: a changed rate starts a fresh count, as a changed limit does."""
    return [f"r{round(seconds * 1e6)}" for seconds in base_intervals]


class FleetPacing:
    """Shaping rates shared through Redis; None answers while Redis cannot be reached."""

    def __init__(self, health: RedisHealth) -> None:
        self.health = health

    @property
    def processes(self) -> int:
        return self.health.processes

    async def pace(self, key: str, pace: Pace) -> tuple[bool, float] | None:
        health = self.health
        if not health.up:
            health.metrics.shaping_decisions.labels(backend="local").inc()
            return None
        rates = list(zip(rate_names(pace.base_intervals), pace.intervals, strict=True))
        try:
            answer = await health.redis.pace(key, rates, pace.max_wait)
        except RedisUnavailable as exc:
            health.failed(exc)
            health.metrics.shaping_decisions.labels(backend="local").inc()
            return None
        health.metrics.shaping_decisions.labels(backend="redis").inc()
        return answer
