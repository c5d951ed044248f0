"""Applies the shaper's decisions around a destination's transaction: the I/O side of traffic shaping.

A transaction that is not admitted costs nothing but its SHAPED outcomes, so the scheduler puts the message
back until `not_before` and its delivery slot goes to other destinations at once; an admitted one runs, and
what the destination answered (delivered, or throttled with 421/4xx) is fed back. With a `SharedPacing`
(spec.limits.backend redis) the rates are paced by the whole fleet: back-off and connections are decided here
first, then one question to the fleet (policy.limits_shaping); when the fleet cannot answer, this process paces
its share of each rate (rate / processes). Back-off and recovery are logged once per episode; the window
gauge lists only destinations below their full window, at most MAX_LABELS of them, so a
relay that talks to a million MX sites still exports a bounded set of series.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from smtp_relay.delivery.shaper import Decision, Feedback, Limits, Pace, Shaper, feedback_of
from smtp_relay.model.envelope import Outcome
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

MAX_LABELS = 50
"""Destinations listed by name in smtp_relay_shaping_window at most."""
MAX_SITE_LENGTH = 120
"""A destination's name is cut to this length (a label value, and a log field)."""

Transaction = Callable[[], Awaitable[dict[str, Outcome]]]


def site_of(hosts: Iterable[str]) -> str:
    """An MX site: the set of MX host names (order and case do not matter), as KumoMTA keys its sites."""
    site = ",".join(sorted({host.lower().rstrip(".") for host in hosts}))
    return site[:MAX_SITE_LENGTH]


class SharedPacing(Protocol):
    """The shaping rates of the whole fleet (all pods and workers of the SmtpRelay), e.g. in Redis."""

    @property
    def processes(self) -> int:
        """Relay processes sharing each rate: while the fleet cannot answer, this one paces rate / processes."""
        ...

    async def pace(self, key: str, pace: Pace) -> tuple[bool, float] | None:
        """(admitted, seconds): admitted after that wait, or refused with the place that far ahead in the
        destination's line. None when the fleet cannot answer now (never raises for it)."""
        ...


def _per_process() -> SharedPacing | None:
    return None


class ShapingGate:
    """One per Deliverer: every shaped destination's transactions go through `run`."""

    def __init__(self, metrics: RelayMetrics | None, clock: Callable[[], float] = time.time) -> None:
        self.shaper = Shaper(clock)
        self.pacing_source: Callable[[], SharedPacing | None] = _per_process
        """Asked at every admission for the fleet's pacing (the relay wires the policy engine's current one,
        so a reload that replaces the Redis connection takes effect at once); None: rates are per process."""
        self._clock = clock
        self._metrics = metrics
        self._reduced: set[str] = set()
        self._labelled: set[str] = set()

    async def _admission(self, key: str, limits: Limits) -> Decision:
        pacing = self.pacing_source()
        if pacing is None or not limits.intervals:
            return self.shaper.acquire(key, limits)
        refused = self.shaper.hold(key, limits)
        if refused is not None:
            return refused
        try:
            answer = await pacing.pace(key, self.shaper.pace_request(key, limits))
        except BaseException:
            self.shaper.unhold(key, limits)
            raise
        if answer is None:
            return self.shaper.pace_locally(key, limits, pacing.processes)
        return self.shaper.paced(key, limits, *answer)

    async def run(
        self, key: str, limits: Limits, recipients: list[str], transaction: Transaction
    ) -> dict[str, Outcome]:
        """Run `transaction` if the destination `key` admits it now, else SHAPED outcomes for `recipients`."""
        decision = await self._admission(key, limits)
        if not decision.admitted:
            reason = decision.reason.value if decision.reason is not None else "rate"
            if self._metrics is not None:
                self._metrics.shaped.labels(reason=reason).inc(len(recipients))
            held = Outcome.shaped(decision.not_before, f"4.7.0 held by traffic shaping ({reason})", key)
            return dict.fromkeys(recipients, held)
        feedback = Feedback.NEUTRAL
        started = self._clock()
        try:
            if decision.wait > 0:
                await asyncio.sleep(decision.wait)
                started = self._clock()
            result = await transaction()
            feedback = feedback_of(result.values())
            return result
        finally:
            self._finished(key, limits, feedback, self._clock() - started)

    def _finished(self, key: str, limits: Limits, feedback: Feedback, duration: float) -> None:
        transition = self.shaper.release(key, limits, feedback, duration)
        if transition is not None and transition.kind == "backed_off":
            log.warning(
                "destination %s backed off for %.0fs after a deferral: window %g -> 1 (slow start)",
                key,
                transition.pause,
                transition.window,
            )
            if self._metrics is not None:
                self._metrics.shaping_backoffs.inc()
        elif transition is not None:
            log.info("destination %s recovered: window %g", key, transition.window)
        window = self.shaper.window(key)
        if window is None or self._metrics is None:
            return
        if window < limits.max_connections:
            self._reduced.add(key)
            if key in self._labelled or len(self._labelled) < MAX_LABELS:
                self._labelled.add(key)
                self._metrics.shaping_window.labels(destination=key).set(window)
        else:
            self._reduced.discard(key)
            if key in self._labelled:
                self._labelled.discard(key)
                self._metrics.shaping_window.remove(key)
        self._metrics.shaping_backed_off.set(len(self._reduced))
