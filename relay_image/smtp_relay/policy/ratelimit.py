"""Rate limits and abuse throttles: messages per key and window, AUTH brute force, connections per client.

Pure state machines with an injected clock (tests run them in virtual time); memory is bounded, since
keys come from clients and a flood of distinct IPs or senders must not grow the relay without limit.
These are the per-process (`spec.limits.backend: local`) counters, and the fallback of the fleet-wide
ones (policy.limits_fleet) with each limit divided by the processes sharing it (`share`). The checks
call them through `MessageLimits` and `AuthLimits`, which both implement.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from smtp_relay.config.policy_spec import RateLimit
from smtp_relay.config.units import parse_duration
from smtp_relay.model.envelope import domain_of
from smtp_relay.policy.verdict import Verdict, defer, reject

Clock = Callable[[], float]
MAX_KEYS = 100_000


@dataclass
class _Window:
    start: float
    """Start of the current fixed bucket."""
    current: int = 0
    previous: int = 0


class SlidingWindow:
    """Counts events per key over a sliding window, approximated from two fixed buckets.

    The estimate is previous * (share of the previous bucket still in the window) + current: O(1) memory per
    key whatever the limit, and it never lets a burst at a bucket boundary double the rate the way fixed
    windows do. A key idle for two windows is forgotten; the least recently used keys go first when full.
    """

    def __init__(self, window: float, clock: Clock = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Window] = OrderedDict()

    def _roll(self, key: str, now: float) -> _Window | None:
        state = self._keys.get(key)
        if state is None:
            return None
        elapsed = now - state.start
        if elapsed >= 2 * self.window:
            del self._keys[key]
            return None
        if elapsed >= self.window:
            state.previous, state.current = state.current, 0
            state.start += self.window
        return state

    def count(self, key: str) -> float:
        """The estimated number of events of `key` within the last window."""
        now = self._clock()
        state = self._roll(key, now)
        if state is None:
            return 0.0
        weight = max(0.0, 1.0 - (now - state.start) / self.window)
        return state.previous * weight + state.current

    def hit(self, key: str, n: int = 1) -> None:
        now = self._clock()
        state = self._roll(key, now)
        if state is None:
            state = _Window(start=now)
        self._keys[key] = state
        self._keys.move_to_end(key)
        state.current += n
        self._evict(now)

    def _evict(self, now: float) -> None:
        while self._keys:
            key, oldest = next(iter(self._keys.items()))
            if len(self._keys) > self._max_keys or now - oldest.start >= 2 * self.window:
                del self._keys[key]
                continue
            break

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


def share(replicas: int, workers: int) -> int:
    """How many relay processes share one fleet-wide limit: pods (spec.replicas) times `--workers`."""
    return max(1, replicas) * max(1, workers)


def divided(limits: Sequence[RateLimit], processes: int) -> list[RateLimit]:
    """Each limit's part for one of `processes` (at least 1): their sum never exceeds the fleet's limit."""
    return [rl.model_copy(update={"limit": max(1, rl.limit // processes)}) for rl in limits]


def rate_refusal(limit: RateLimit) -> Verdict:
    """451 4.7.1 naming the limit that has no room."""
    text = f"Rate limit exceeded for {limit.key} ({limit.limit} per {limit.per}), try again later"
    return defer(451, "4.7.1", text, f"ratelimit_{limit.key}")


class MessageLimits(Protocol):
    """The message rate limits as the checks see them, per process or fleet-wide."""

    limits: list[RateLimit]

    def check(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> Verdict | None:
        """At MAIL: 451 4.7.1 when a limit is known to have no room (early refusal; counts nothing)."""
        ...

    async def count(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> Verdict | None:
        """At end of DATA: count the message when every limit has room, else 451 4.7.1 (authoritative)."""
        ...


def limit_key(limit: RateLimit, client_ip: str, auth_user: str | None, mail_from: str | None) -> str | None:
    """What one RateLimit counts for this transaction; None when it does not apply (no AUTH user, no sender)."""
    if limit.key == "client":
        return client_ip or None
    if limit.key == "user":
        return auth_user
    if mail_from is None:
        return None
    if limit.key == "sender":
        return mail_from.lower() or "<>"
    return domain_of(mail_from) or None


class RateLimiter:
    """All `policy.rateLimits` of one config: checked at MAIL (early refusal) and counted at end of DATA.

    Counting only accepted messages keeps a client that got a 4xx from being punished twice; the end of
    DATA check is authoritative, so parallel sessions cannot slip past the MAIL-time check together.
    """

    def __init__(self, limits: Sequence[RateLimit], clock: Clock = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.limits = list(limits)
        self._windows = [SlidingWindow(parse_duration(rl.per), clock, max_keys) for rl in self.limits]

    def check(self, client_ip: str, auth_user: str | None, mail_from: str | None, *, cost: int = 0) -> Verdict | None:
        """451 4.7.1 when a limit has no room for `cost` more messages (0: is the limit already exhausted?).

        With cost > 0 and room in every limit, the messages are counted.
        """
        keys = [limit_key(rl, client_ip, auth_user, mail_from) for rl in self.limits]
        for rl, window, key in zip(self.limits, self._windows, keys, strict=True):
            if key is None:
                continue
            if window.count(key) + max(cost, 1) > rl.limit:
                return rate_refusal(rl)
        if cost > 0:
            for window, key in zip(self._windows, keys, strict=True):
                if key is not None:
                    window.hit(key, cost)
        return None

    async def count(self, client_ip: str, auth_user: str | None, mail_from: str | None) -> Verdict | None:
        return self.check(client_ip, auth_user, mail_from, cost=1)


@dataclass
class _AuthRecord:
    """One client address's AUTH history: who failed when (oldest first), checks under way, its cool-down."""

    failures: deque[tuple[float, str]] = field(default_factory=deque)
    pending: int = 0
    blocked_until: float | None = None


MAX_USERNAME_KEPT = 256
"""Characters of a failed username kept in a record (a client chooses them; memory stays bounded)."""


def auth_throttled() -> Verdict:
    return defer(454, "4.7.0", "Too many authentication failures, try again later", "auth_throttled")


def failure_outcome(failures: int, blocked: bool, delay_after: int, max_delay: float) -> tuple[Verdict, float]:
    """A failed login's reply and tarpit delay, from the address's failures in the window (and its block)."""
    if blocked:
        return auth_throttled(), max_delay
    delay = min(max_delay, max(0.0, failures - delay_after))
    return reject(535, "5.7.8", "Authentication credentials invalid", "auth_failed"), delay


class AuthLimits(Protocol):
    """The AUTH failure throttle as the checks see it, per process or fleet-wide."""

    async def refusal(self, client_ip: str, *, reserve: bool) -> Verdict | None:
        """454 4.7.0 while the address cools down or has no attempt left; otherwise None and, with `reserve`,
        the password check is counted as under way in the same step."""
        ...

    async def reserve_anyway(self, client_ip: str) -> None:
        """Count a check as under way whatever the throttle says (audit mode)."""
        ...

    async def failed(self, client_ip: str, username: str) -> tuple[Verdict, float]:
        """Settle a reserved check as failed: the reply (535 5.7.8, or 454 4.7.0 once blocked) and the delay."""
        ...

    async def succeeded(self, client_ip: str, username: str) -> None:
        """Settle a reserved check as a login: forget this username's failures from this address."""
        ...

    def abandoned(self, client_ip: str, username: str) -> None:
        """Settle a reserved check as failed without waiting (the client left mid-check)."""
        ...


class AuthThrottle:
    """AUTH failure throttle against password guessing, per client address and per (address, username).

    Every attempt is reserved before its password is checked: an address with `max_failures` failures
    in `window`, counting the checks still under way, gets 454 4.7.0 before any check, so pipelined
    or parallel AUTH lines cannot buy more checks than the limit. After `delay_after` failures each
    further one is answered after a growing delay (tarpit); reaching `max_failures` blocks the address
    for `cooldown`. A successful login forgets only that username's failures from that address: owning
    one account does not buy guesses at another's password.
    """

    def __init__(
        self,
        *,
        max_failures: int = 10,
        delay_after: int = 3,
        window: float = 600.0,
        cooldown: float = 900.0,
        max_delay: float = 5.0,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.max_failures = max_failures
        self.delay_after = delay_after
        self.window = window
        self.cooldown = cooldown
        self.max_delay = max_delay
        self._clock = clock
        self._max_keys = max_keys
        self._records: OrderedDict[str, _AuthRecord] = OrderedDict()

    def _record(self, client_ip: str, now: float) -> _AuthRecord | None:
        """The address's record with expired failures and cool-down dropped; None (and forgotten) when empty."""
        record = self._records.get(client_ip)
        if record is None:
            return None
        while record.failures and now - record.failures[0][0] >= self.window:
            record.failures.popleft()
        if record.blocked_until is not None and now >= record.blocked_until:
            record.blocked_until = None
        if not record.failures and not record.pending and record.blocked_until is None:
            del self._records[client_ip]
            return None
        return record

    def _recorded(self, client_ip: str, now: float) -> _AuthRecord:
        record = self._record(client_ip, now)
        if record is None:
            record = self._records[client_ip] = _AuthRecord()
            while len(self._records) > self._max_keys:
                self._records.popitem(last=False)
        self._records.move_to_end(client_ip)
        return record

    def before_auth(self, client_ip: str) -> Verdict | None:
        """454 4.7.0 while the address cools down or has no attempt left (failures plus checks under way)."""
        record = self._record(client_ip, self._clock())
        if record is None:
            return None
        if record.blocked_until is not None or len(record.failures) + record.pending >= self.max_failures:
            return auth_throttled()
        return None

    def reserve(self, client_ip: str) -> None:
        """Count a password check as under way; `failure` or `success` settles it."""
        self._recorded(client_ip, self._clock()).pending += 1

    def failure(self, client_ip: str, username: str) -> tuple[Verdict, float]:
        """Settle a reserved check as failed: the reply (535 5.7.8, or 454 4.7.0 once blocked) and the delay."""
        now = self._clock()
        record = self._recorded(client_ip, now)
        record.pending = max(0, record.pending - 1)
        record.failures.append((now, username[:MAX_USERNAME_KEPT]))
        while len(record.failures) > self.max_failures:
            record.failures.popleft()
        failures = len(record.failures)
        if failures >= self.max_failures:
            record.blocked_until = now + self.cooldown
        return failure_outcome(failures, failures >= self.max_failures, self.delay_after, self.max_delay)

    def success(self, client_ip: str, username: str) -> None:
        """Settle a reserved check as a login: forget this username's failures from this address, no others."""
        record = self._record(client_ip, self._clock())
        if record is None:
            return
        record.pending = max(0, record.pending - 1)
        kept = username[:MAX_USERNAME_KEPT]
        record.failures = deque(entry for entry in record.failures if entry[1] != kept)
        self._record(client_ip, self._clock())  # forgets a record left empty

    # --- AuthLimits: the same decisions, as the checks call them ------------------------------------

    async def refusal(self, client_ip: str, *, reserve: bool) -> Verdict | None:
        refused = self.before_auth(client_ip)
        if refused is None and reserve:
            self.reserve(client_ip)
        return refused

    async def reserve_anyway(self, client_ip: str) -> None:
        self.reserve(client_ip)

    async def failed(self, client_ip: str, username: str) -> tuple[Verdict, float]:
        return self.failure(client_ip, username)

    async def succeeded(self, client_ip: str, username: str) -> None:
        self.success(client_ip, username)

    def abandoned(self, client_ip: str, username: str) -> None:
        self.failure(client_ip, username)

    def failures(self, client_ip: str, username: str | None = None) -> int:
        """Failures in the window from this address (of this username only, when given)."""
        record = self._record(client_ip, self._clock())
        if record is None:
            return 0
        return sum(1 for _, user in record.failures if username is None or user == username[:MAX_USERNAME_KEPT])


class ConnectionLimiter:
    """Open SMTP connections per client IP, counted from accept to close, whatever stage a connection is in.

    Counting every accepted socket (not only those that got as far as the greeting) is what bounds the
    descriptors one client can hold: the listener counts a connection as the kernel hands it over and
    uncounts it once its socket is closed. Only clients with open connections take memory.
    """

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def opened(self, client_ip: str) -> None:
        self._open[client_ip] = self._open.get(client_ip, 0) + 1

    def closed(self, client_ip: str) -> None:
        current = self._open.get(client_ip, 0)
        if current <= 1:
            self._open.pop(client_ip, None)
        else:
            self._open[client_ip] = current - 1

    def refusal(self, client_ip: str, limit: int) -> Verdict | None:
        """421 4.7.0 when the client holds more than `limit` connections (the one asking is already counted)."""
        if self._open.get(client_ip, 0) > limit:
            return defer(421, "4.7.0", "Too many connections from your host, try again later", "connection_limit")
        return None

    def open_connections(self, client_ip: str) -> int:
        return self._open.get(client_ip, 0)
