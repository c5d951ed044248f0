"""Fleet-wide rate limits and AUTH throttle (`spec.limits.backend: redis`), with the local fallback.

Each decision goes to Redis (policy.limits_redis: one script, one round trip); when Redis fails the decision
is taken by the local state machines of policy.ratelimit with every limit divided by the relay processes
sharing it (replicas x workers), so the fleet as a whole stays within its limits while it cannot
coordinate, and mail is never refused because Redis is gone. `RedisHealth` logs each transition once,
shows it in metrics, and probes Redis in the background until it answers again: while down, no session
waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from smtp_relay.config.policy_spec import RateLimit
from smtp_relay.config.units import parse_duration
from smtp_relay.policy.limits_redis import RedisLimits, RedisUnavailable
from smtp_relay.policy.ratelimit import (
    AuthThrottle,
    RateLimiter,
    auth_throttled,
    failure_outcome,
    limit_key,
    rate_refusal,
)
from smtp_relay.policy.verdict import Verdict
from smtp_relay.telemetry.metrics import LimitsMetrics

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0
"""Seconds between the background PINGs that find Redis again after a failure."""
REFUSED_FOR = 1.0
"""Seconds a limit Redis found full is refused at MAIL by this process without asking Redis again."""
MAX_REFUSED_KEPT = 10_000


class RedisHealth:
    """Up or down: decisions go to Redis only while up; a failure flips to down (logged once) and starts a
    probe that flips back (logged once) when Redis answers a PING."""

    def __init__(self, redis: RedisLimits, processes: int, metrics: LimitsMetrics) -> None:
        self.redis = redis
        self.processes = processes
        self.metrics = metrics
        self.up = True
        self._probe: asyncio.Task[None] | None = None
        metrics.fallback.set(0)
        metrics.share.set(processes)

    def failed(self, error: RedisUnavailable) -> None:
        if not self.up:
            return
        self.up = False
        self.metrics.fallback.set(1)
        self.metrics.fallbacks.inc()
        log.warning(
            "fleet-wide limits: Redis at %s unavailable (%s): falling back to local limits, each divided by %d"
            " (replicas x workers); accepting mail as usual",
            self.redis.target.address,
            error,
            self.processes,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._find_again())

    async def _find_again(self) -> None:
        while not self.up:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.redis.ping()
            except RedisUnavailable:
                continue
            self.up = True
            self.metrics.fallback.set(0)
            log.warning(
                "fleet-wide limits: Redis at %s answers again: limits are fleet-wide", self.redis.target.address
            )

    async def close(self) -> None:
        """Retired (a reload changed the Redis target): a decision still holding it is taken locally, unlogged."""
        self.up = False
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.redis.close()


class FleetRateLimiter:
    """`MessageLimits` shared by the fleet: end of DATA counts in Redis; MAIL refuses early only what this
    process saw Redis refuse in the last second (no round trip at MAIL: the end of DATA is authoritative)."""

    def __init__(
        self,
        limits: Sequence[RateLimit],
        health: RedisHealth,
        fallback: RateLimiter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = list(limits)
        self.health = self._health = health
        self._fallback = fallback
        self._clock = clock
        self._windows_ms = [int(parse_duration(rl.per) * 1000) for rl in self.limits]
        self._refused: OrderedDict[tuple[int, str], float] = OrderedDict()

    def _counters(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> list[tuple[int, str]]:
        """(limit number, what it counts) of every limit that applies to this transaction."""
        counters = []
        for i, rl in enumerate(self.limits):
            key = limit_key(rl, client_ip, auth_user, mail_from)
            if key is not None:
                counters.append((i, key))
        return counters

    def _redis_counter(self, index: int, key: str) -> tuple[str, int, int]:
        """The Redis counter of one limit and key: a changed limit or window starts afresh, as locally."""
        rl, window_ms = self.limits[index], self._windows_ms[index]
        return f"{rl.key}:{window_ms}:{rl.limit}:{key}", rl.limit, window_ms

    def check(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> Verdict | None:
        if not self._health.up:
            return self._fallback.check(client_ip, auth_user, mail_from)
        if not self._refused:
            return None
        now = self._clock()
        for i, rl in enumerate(self.limits):
            key = limit_key(rl, client_ip, auth_user, mail_from)
            until = self._refused.get((i, key)) if key is not None else None
            if until is not None and until > now:
                return rate_refusal(rl)
        return None

    async def count(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> Verdict | None:
        counters = self._counters(client_ip, auth_user, mail_from)
        if not counters:
            return None
        if self._health.up:
            try:
                full = await self._health.redis.take([self._redis_counter(i, key) for i, key in counters], 1)
            except RedisUnavailable as exc:
                self._health.failed(exc)
            else:
                self._health.metrics.decisions.labels(backend="redis").inc()
                if full == 0:
                    return None
                index, key = counters[full - 1]
                self._remember_refusal((index, key))
                return rate_refusal(self.limits[index])
        self._health.metrics.decisions.labels(backend="local").inc()
        return await self._fallback.count(client_ip, auth_user, mail_from)

    def _remember_refusal(self, what: tuple[int, str]) -> None:
        now = self._clock()
        self._refused[what] = now + REFUSED_FOR
        self._refused.move_to_end(what)
        while self._refused and (len(self._refused) > MAX_REFUSED_KEPT or next(iter(self._refused.values())) <= now):
            self._refused.popitem(last=False)


class FleetAuthThrottle:
    """`AuthLimits` shared by the fleet: failures, checks under way and cool-downs per address in Redis;
    the local fallback allows each process its share of the failures."""

    def __init__(self, settings: AuthThrottle, health: RedisHealth, fallback: AuthThrottle) -> None:
        self._settings = settings
        self.health = self._health = health
        self._fallback = fallback
        self._settling: set[asyncio.Task[None]] = set()

    def _decided(self, backend: str) -> None:
        self._health.metrics.decisions.labels(backend=backend).inc()

    async def refusal(self, client_ip: str, *, reserve: bool) -> Verdict | None:
        if self._health.up:
            s = self._settings
            try:
                allowed = await self._health.redis.auth_allowed(client_ip, s.max_failures, s.window, reserve=reserve)
            except RedisUnavailable as exc:
                self._health.failed(exc)
            else:
                self._decided("redis")
                return None if allowed else auth_throttled()
        self._decided("local")
        return await self._fallback.refusal(client_ip, reserve=reserve)

    async def reserve_anyway(self, client_ip: str) -> None:
        if self._health.up:
            try:
                await self._health.redis.auth_allowed(client_ip, 1 << 30, self._settings.window, reserve=True)
                return
            except RedisUnavailable as exc:
                self._health.failed(exc)
        await self._fallback.reserve_anyway(client_ip)

    async def failed(self, client_ip: str, username: str) -> tuple[Verdict, float]:
        s = self._settings
        if self._health.up:
            try:
                failures, blocked = await self._health.redis.auth_failure(
                    client_ip, username, s.max_failures, s.window, s.cooldown
                )
            except RedisUnavailable as exc:
                self._health.failed(exc)
            else:
                self._decided("redis")
                return failure_outcome(failures, blocked, s.delay_after, s.max_delay)
        self._decided("local")
        return await self._fallback.failed(client_ip, username)

    async def succeeded(self, client_ip: str, username: str) -> None:
        if self._health.up:
            try:
                await self._health.redis.auth_success(client_ip, username)
                return
            except RedisUnavailable as exc:
                self._health.failed(exc)
        await self._fallback.succeeded(client_ip, username)

    def abandoned(self, client_ip: str, username: str) -> None:
        task = asyncio.get_running_loop().create_task(self._abandon(client_ip, username))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _abandon(self, client_ip: str, username: str) -> None:
        await self.failed(client_ip, username)
