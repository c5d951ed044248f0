"""Traffic shaping decisions per destination: connections, paced rates, adaptive back-off (pure, injected clock).

Each destination (a smarthost route, or one MX site of an mx route) has a concurrency window, a paced rate
per limit (GCRA with no burst: admissions are at least 60/N seconds apart, so no minute ever holds more than
N) and a back-off state. A transaction over a limit is not admitted: it gets a `not_before`, the next free
place in the destination's line (`tail`), so a backlog of thousands is spread over distinct times and each
message comes back about once, instead of all of them polling. An admission that is only a few milliseconds
early (a message coming back at its place while the previous one was admitted a little late) is admitted
with a short `wait` instead. No I/O and no asyncio here: delivery/gate.py applies these decisions; the clock
is wall-clock seconds because `not_before` goes into the queue's schedule.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from smtp_relay.config.shaping_spec import ShapingSpec
from smtp_relay.config.spec import Destination, RoutingSpec
from smtp_relay.config.units import parse_duration
from smtp_relay.model.envelope import Outcome, OutcomeKind

MAX_WAIT = 0.05
"""An admission due within this many seconds waits for it rather than going back to the queue."""
INITIAL_DURATION = 0.5
"""Assumed seconds per transaction until one was measured (spaces deferrals over a full window)."""
MAX_STATES = 10_000
"""Destinations tracked before idle ones are forgotten (an idle one is indistinguishable from a new one)."""


@dataclass(frozen=True)
class Limits:
    """A ShapingSpec in the units the decisions use."""

    max_connections: int
    max_messages_per_connection: int | None
    intervals: tuple[float, ...]
    """Seconds between admissions, one per configured rate (messagesPerMinute, messagesPerHour)."""
    adaptive: bool
    initial_backoff: float
    max_backoff: float

    @classmethod
    def from_spec(cls, spec: ShapingSpec) -> Limits:
        intervals = []
        if spec.messages_per_minute is not None:
            intervals.append(60.0 / spec.messages_per_minute)
        if spec.messages_per_hour is not None:
            intervals.append(3600.0 / spec.messages_per_hour)
        return cls(
            max_connections=spec.max_connections,
            max_messages_per_connection=spec.max_messages_per_connection,
            intervals=tuple(intervals),
            adaptive=spec.adaptive.enabled,
            initial_backoff=parse_duration(spec.adaptive.initial_backoff),
            max_backoff=parse_duration(spec.adaptive.max_backoff),
        )


def destination_limits(routing: RoutingSpec) -> dict[int, tuple[str, Limits]] | None:
    """Per destination object (by id): its name in metrics and logs, and its limits; None when nothing is shaped.

    A route's own shaping replaces routing.shaping; routing.default takes routing.shaping.
    """
    table: dict[int, tuple[str, Limits]] = {}
    if routing.shaping is not None:
        table[id(routing.default)] = ("default", Limits.from_spec(routing.shaping))
    for index, route in enumerate(routing.routes):
        spec = route.shaping or routing.shaping
        if spec is not None:
            table[id(route)] = (f"routes[{index}]", Limits.from_spec(spec))
    return table or None


def limits_of(table: dict[int, tuple[str, Limits]] | None, destination: Destination) -> tuple[str, Limits] | None:
    return None if table is None else table.get(id(destination))


class Feedback(enum.Enum):
    """What a transaction says about the destination's appetite."""

    DELIVERED = "delivered"
    THROTTLED = "throttled"
    """421, or a 4xx for every recipient: the destination asks us to slow down."""
    NEUTRAL = "neutral"
    """Nothing to learn: a 5xx, one refused recipient among accepted ones, a connection that failed."""


def feedback_of(outcomes: Iterable[Outcome]) -> Feedback:
    """421 anywhere, or a 4xx reply for the whole transaction, is a throttle; any delivery is a success."""
    listed = list(outcomes)
    if any(o.kind is OutcomeKind.TEMPORARY and o.code == 421 for o in listed):
        return Feedback.THROTTLED
    if any(o.kind is OutcomeKind.DELIVERED for o in listed):
        return Feedback.DELIVERED
    if listed and all(o.kind is OutcomeKind.TEMPORARY and 400 <= o.code < 500 for o in listed):
        return Feedback.THROTTLED
    return Feedback.NEUTRAL


class Reason(enum.Enum):
    """Why a transaction was not admitted (a metrics label)."""

    CONNECTIONS = "connections"
    RATE = "rate"
    BACKOFF = "backoff"


@dataclass(frozen=True)
class Decision:
    admitted: bool
    wait: float = 0.0
    """Admitted: sleep this long first (at most MAX_WAIT)."""
    not_before: float = 0.0
    """Not admitted: wall-clock time to come back."""
    reason: Reason | None = None


@dataclass(frozen=True)
class Transition:
    """A change worth a log line: the destination backed off (pause seconds) or recovered its full window."""

    kind: str
    """"backed_off" or "recovered"."""
    window: float
    """The window before backing off, or the recovered one."""
    pause: float = 0.0


@dataclass(frozen=True)
class Pace:
    """A rate decision the fleet shares (delivery/gate.py asks it through `SharedPacing`)."""

    base_intervals: tuple[float, ...]
    """The configured rates (Limits.intervals): what names each rate's count."""
    intervals: tuple[float, ...]
    """Seconds each rate's next admission moves on (the configured ones, scaled by the destination's window)."""
    max_wait: float
    """An admission due within this many seconds is admitted with a wait."""


@dataclass
class DestinationState:
    window: float
    ssthresh: float
    in_flight: int = 0
    tat: tuple[float, ...] = ()
    """Theoretical arrival time per rate: the earliest next admission."""
    tail: float = 0.0
    """The latest place handed to a deferred transaction."""
    paused_until: float = 0.0
    backoffs: int = 0
    """Back-offs since the last delivery (the pause doubles with each)."""
    duration: float = INITIAL_DURATION
    """Moving average of transaction seconds."""
    ceiling: float = 1.0
    """maxConnections of the destination's limits when last used."""

    def idle(self, now: float) -> bool:
        """Nothing here that a fresh state would not also say: safe to forget."""
        return (
            self.in_flight == 0
            and self.window >= self.ceiling
            and self.paused_until <= now
            and self.tail <= now
            and all(t <= now for t in self.tat)
        )


class Shaper:
    """Admissions and feedback of every destination; one per Deliverer, called from one event loop."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._states: dict[str, DestinationState] = {}

    def state(self, key: str, limits: Limits) -> DestinationState:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= MAX_STATES:
                self._forget_idle()
            window = float(limits.max_connections)
            state = self._states[key] = DestinationState(window=window, ssthresh=window)
        if len(state.tat) != len(limits.intervals):  # a reload changed the rates
            state.tat = (0.0,) * len(limits.intervals)
        state.ceiling = float(limits.max_connections)
        state.window = min(state.window, state.ceiling)
        return state

    def acquire(self, key: str, limits: Limits, share: int = 1) -> Decision:
        """Admit a transaction now (counted in flight until release) or tell when to come back.

        `share` > 1 divides the rates (the fleet's pacing is unreachable: this process paces its part)."""
        refused = self.hold(key, limits)
        return refused if refused is not None else self.pace_locally(key, limits, share)

    def hold(self, key: str, limits: Limits) -> Decision | None:
        """The local half of an admission: back-off and connections. None: a place in flight is held, and
        the rates decide (`pace_locally`, or the fleet's answer through `paced`); otherwise the deferral."""
        now = self._clock()
        state = self.state(key, limits)
        window = self._window(state, limits)
        spacing = max(state.duration / window, *self._intervals(state, limits, 1), 0.0)
        if state.paused_until > now:
            return self._defer(state, state.paused_until, spacing, Reason.BACKOFF)
        if state.in_flight >= math.floor(window):
            return self._defer(state, now + state.duration / window, spacing, Reason.CONNECTIONS)
        state.in_flight += 1
        return None

    def pace_locally(self, key: str, limits: Limits, share: int = 1) -> Decision:
        """The rates of a held place, paced in this process (each rate divided by `share`)."""
        now = self._clock()
        state = self.state(key, limits)
        intervals = self._intervals(state, limits, share)
        due = max((*state.tat, now))
        if due - now > MAX_WAIT:
            state.in_flight = max(0, state.in_flight - 1)
            spacing = max(state.duration / self._window(state, limits), *intervals)
            return self._defer(state, due, spacing, Reason.RATE)
        state.tat = tuple(due + i for i in intervals)
        return Decision(admitted=True, wait=due - now)

    def pace_request(self, key: str, limits: Limits) -> Pace:
        """What the fleet's pacing is asked for a held place: the rates' intervals, scaled by the window."""
        return Pace(limits.intervals, self._intervals(self.state(key, limits), limits, 1), MAX_WAIT)

    def paced(self, key: str, limits: Limits, admitted: bool, delay: float) -> Decision:
        """The fleet's answer for a held place: admitted after `delay` seconds, or refused with the place
        `delay` seconds from now in the fleet's line (kept as this destination's tail too)."""
        state = self.state(key, limits)
        if admitted:
            return Decision(admitted=True, wait=max(0.0, delay))
        state.in_flight = max(0, state.in_flight - 1)
        place = self._clock() + max(0.0, delay)
        state.tail = max(state.tail, place)
        return Decision(admitted=False, not_before=place, reason=Reason.RATE)

    def unhold(self, key: str, limits: Limits) -> None:
        """Give back a held place that will not run (the decision was cancelled)."""
        state = self.state(key, limits)
        state.in_flight = max(0, state.in_flight - 1)

    def release(self, key: str, limits: Limits, feedback: Feedback, duration: float) -> Transition | None:
        """Account for a finished transaction; back off on a throttle, widen the window on a delivery."""
        now = self._clock()
        state = self.state(key, limits)
        state.in_flight = max(0, state.in_flight - 1)
        state.duration += 0.2 * (min(max(duration, 0.001), 60.0) - state.duration)
        if not limits.adaptive:
            return None
        if feedback is Feedback.THROTTLED:
            if state.paused_until > now:
                return None  # one back-off per episode, however many transactions were in flight
            before = state.window
            pause = min(limits.max_backoff, limits.initial_backoff * 2.0**state.backoffs)
            state.backoffs += 1
            state.paused_until = now + pause
            state.ssthresh = max(1.0, before / 2)
            state.window = 1.0
            return Transition("backed_off", before, pause)
        if feedback is Feedback.DELIVERED and state.paused_until <= now:  # one from before the pause says nothing
            state.backoffs = 0
            if state.window < limits.max_connections:
                state.window += 1.0 if state.window < state.ssthresh else 1.0 / state.window
                if state.window >= limits.max_connections:
                    state.window = float(limits.max_connections)
                    return Transition("recovered", state.window)
        return None

    def window(self, key: str) -> float | None:
        """The current concurrency window of a tracked destination (for gauges and tests)."""
        state = self._states.get(key)
        return None if state is None else state.window

    # -- internals ----------------------------------------------------------------------------------

    @staticmethod
    def _window(state: DestinationState, limits: Limits) -> float:
        return state.window if limits.adaptive else float(limits.max_connections)

    def _intervals(self, state: DestinationState, limits: Limits, share: int) -> tuple[float, ...]:
        """Seconds between admissions per rate: slower while the window is reduced, `share` times slower
        when this process paces only its part of the fleet's rate."""
        scale = limits.max_connections / self._window(state, limits) * max(1, share)
        return tuple(i * scale for i in limits.intervals)

    @staticmethod
    def _defer(state: DestinationState, earliest: float, spacing: float, reason: Reason) -> Decision:
        """The next place in the destination's line: from `earliest` on, one spacing after the last place."""
        place = max(earliest, state.tail + spacing)
        state.tail = place
        return Decision(admitted=False, not_before=place, reason=reason)

    def _forget_idle(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._states.items() if s.idle(now)]:
            del self._states[key]
