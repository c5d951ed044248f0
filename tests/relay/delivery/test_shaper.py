"""The shaping decisions (delivery/shaper.py) in virtual time: connections, paced rates, back-off, slow start."""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any

import pytest

from smtp_relay.config.manifest import ManifestError, parse_spec
from smtp_relay.config.shaping_spec import ShapingSpec
from smtp_relay.delivery import shaper as shaper_module
from smtp_relay.delivery.shaper import (
    MAX_WAIT,
    Feedback,
    Limits,
    Reason,
    Shaper,
    destination_limits,
    feedback_of,
)
from smtp_relay.model.envelope import Outcome


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits(**fields: Any) -> Limits:
    return Limits.from_spec(ShapingSpec.model_validate(fields))


def test_connections_are_capped_and_freed() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=2)
    assert shaper.acquire("d", lim).admitted
    assert shaper.acquire("d", lim).admitted
    third = shaper.acquire("d", lim)
    assert not third.admitted and third.reason is Reason.CONNECTIONS
    assert third.not_before > clock.now
    fourth = shaper.acquire("d", lim)
    assert fourth.not_before > third.not_before  # the backlog is spread, not all told the same instant
    assert shaper.acquire("other", lim).admitted  # another destination is not affected
    shaper.release("d", lim, Feedback.DELIVERED, 0.2)
    assert shaper.acquire("d", lim).admitted


def _simulate(
    lim: Limits, messages: int, *, jitter: float = 0.0, seed: int = 7, duration: float = 0.05
) -> tuple[list[float], dict[int, int]]:
    """A scheduler in virtual time: every message arrives at t0, deferred ones come back at not_before plus
    a random scheduling latency; returns the admission times and how often each message was deferred."""
    rng = random.Random(seed)
    clock = Clock()
    shaper = Shaper(clock)
    queue = [(clock.now, i) for i in range(messages)]
    heapq.heapify(queue)
    running: list[float] = []  # end times of admitted transactions
    admitted: list[float] = []
    deferrals: dict[int, int] = {}
    while queue:
        when, msg = heapq.heappop(queue)
        while running and running[0] <= when:
            clock.now = heapq.heappop(running)
            shaper.release("d", lim, Feedback.DELIVERED, duration)
        clock.now = max(clock.now, when)
        decision = shaper.acquire("d", lim)
        if decision.admitted:
            assert 0.0 <= decision.wait <= MAX_WAIT
            start = clock.now + decision.wait
            admitted.append(start)
            heapq.heappush(running, start + duration)
        else:
            assert decision.not_before >= clock.now
            deferrals[msg] = deferrals.get(msg, 0) + 1
            heapq.heappush(queue, (decision.not_before + rng.uniform(0, jitter), msg))
    return admitted, deferrals


@pytest.mark.parametrize("jitter", [0.0, 0.02])
def test_rate_is_paced_and_each_message_comes_back_about_once(jitter: float) -> None:
    lim = limits(messagesPerMinute=120)  # one every 0.5 s
    admitted, deferrals = _simulate(lim, 400, jitter=jitter)
    assert len(admitted) == 400
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert min(gaps) >= 0.5 - 1e-9
    # never more than 120 in any minute (every window starting at an admission)
    for index, start in enumerate(admitted):
        in_minute = sum(1 for t in admitted[index:] if t < start + 60)
        assert in_minute <= 120
    # the backlog is spread over distinct places: about one deferral per message, not a poll storm
    assert sum(deferrals.values()) <= 400 * 1.5
    # and the destination is kept busy: 400 at 0.5 s apart take about 200 s
    assert admitted[-1] - admitted[0] <= 199.5 + 400 * jitter


def test_minute_and_hour_rates_both_hold() -> None:
    lim = limits(messagesPerMinute=60, messagesPerHour=1200)  # the hour is the tighter one: 3 s apart
    admitted, _ = _simulate(lim, 50)
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert min(gaps) >= 3.0 - 1e-9


def test_throttle_pauses_then_slow_start_then_recovery() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=8, adaptive={"initialBackoff": "10s", "maxBackoff": "40s"})
    for _ in range(3):
        assert shaper.acquire("d", lim).admitted
    first = shaper.release("d", lim, Feedback.THROTTLED, 0.1)
    assert first is not None and first.kind == "backed_off" and first.pause == 10.0 and first.window == 8
    assert shaper.release("d", lim, Feedback.THROTTLED, 0.1) is None  # same episode: one back-off
    shaper.release("d", lim, Feedback.DELIVERED, 0.1)
    paused = shaper.acquire("d", lim)
    assert not paused.admitted and paused.reason is Reason.BACKOFF and paused.not_before >= clock.now + 10
    clock.now += 10
    assert shaper.window("d") == 1.0
    assert shaper.acquire("d", lim).admitted
    assert not shaper.acquire("d", lim).admitted  # window 1: one at a time
    # slow start: +1 per delivery up to half the old window (4), then +1/window
    windows = []
    transitions = []
    for _ in range(12):
        transitions.append(shaper.release("d", lim, Feedback.DELIVERED, 0.1))
        windows.append(shaper.window("d"))
        assert shaper.acquire("d", lim).admitted
    assert windows[:3] == [2.0, 3.0, 4.0]
    assert 4.0 < windows[3] < 5.0
    assert windows == sorted(windows)
    while shaper.window("d") != 8.0:
        transitions.append(shaper.release("d", lim, Feedback.DELIVERED, 0.1))
        assert shaper.acquire("d", lim).admitted
    recovered = [t for t in transitions if t is not None]
    assert [t.kind for t in recovered] == ["recovered"] and recovered[0].window == 8.0


def test_repeated_throttles_double_the_pause_up_to_max_and_delivery_resets_it() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(adaptive={"initialBackoff": "10s", "maxBackoff": "35s"})
    pauses = []
    for _ in range(4):
        clock.now += 100
        assert shaper.acquire("d", lim).admitted
        transition = shaper.release("d", lim, Feedback.THROTTLED, 0.1)
        assert transition is not None
        pauses.append(transition.pause)
    assert pauses == [10.0, 20.0, 35.0, 35.0]
    capped = limits(adaptive={"initialBackoff": "5m", "maxBackoff": "1m"})
    clock.now += 1000
    assert shaper.acquire("e", capped).admitted
    first = shaper.release("e", capped, Feedback.THROTTLED, 0.1)
    assert first is not None and first.pause == 60.0  # the first pause is capped by maxBackoff too
    clock.now += 100
    assert shaper.acquire("d", lim).admitted
    shaper.release("d", lim, Feedback.DELIVERED, 0.1)
    clock.now += 100
    assert shaper.acquire("d", lim).admitted
    transition = shaper.release("d", lim, Feedback.THROTTLED, 0.1)
    assert transition is not None and transition.pause == 10.0


def test_rates_slow_down_with_the_window() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=4, messagesPerMinute=240, adaptive={"initialBackoff": "1s"})  # 0.25 s apart
    assert shaper.acquire("d", lim).admitted
    shaper.release("d", lim, Feedback.THROTTLED, 0.1)
    clock.now += 1.0
    assert shaper.acquire("d", lim).admitted  # window 1 of 4: the rate is a quarter, 1 s apart
    shaper.release("d", lim, Feedback.NEUTRAL, 0.1)
    clock.now += 0.5
    held = shaper.acquire("d", lim)
    assert not held.admitted and held.reason is Reason.RATE
    assert held.not_before == pytest.approx(clock.now + 0.5)


def test_adaptive_off_keeps_the_limits_fixed() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=2, adaptive={"enabled": False})
    assert shaper.acquire("d", lim).admitted
    assert shaper.release("d", lim, Feedback.THROTTLED, 0.1) is None
    assert shaper.acquire("d", lim).admitted and shaper.acquire("d", lim).admitted


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([Outcome.temporary(421, "4.7.0 slow down")], Feedback.THROTTLED),
        ([Outcome.delivered(), Outcome.temporary(421, "closing")], Feedback.THROTTLED),
        ([Outcome.temporary(451, "4.7.1 later"), Outcome.temporary(450, "4.2.0 later")], Feedback.THROTTLED),
        ([Outcome.delivered(), Outcome.temporary(452, "4.2.2 mailbox full")], Feedback.DELIVERED),
        ([Outcome.temporary(452, "4.2.2 full"), Outcome.permanent(550, "5.1.1 no")], Feedback.NEUTRAL),
        ([Outcome.temporary(0, "4.4.1 connect failed")], Feedback.NEUTRAL),
        ([Outcome.permanent(554, "5.7.1 refused")], Feedback.NEUTRAL),
        ([], Feedback.NEUTRAL),
    ],
)
def test_feedback_of_a_transaction(outcomes: list[Outcome], expected: Feedback) -> None:
    assert feedback_of(outcomes) is expected


def test_destination_limits_route_replaces_the_default() -> None:
    spec = parse_spec(
        {
            "routing": {
                "default": {"mx": {}},
                "shaping": {"maxConnections": 3},
                "routes": [
                    {"match": {"recipientDomains": ["a.test"]}, "capture": {}, "shaping": {"messagesPerMinute": 6}},
                    {"match": {"recipientDomains": ["b.test"]}, "capture": {}},
                ],
            }
        }
    )
    table = destination_limits(spec.routing)
    assert table is not None
    routing = spec.routing
    assert table[id(routing.default)] == ("default", limits(maxConnections=3))
    assert table[id(routing.routes[0])] == ("routes[0]", limits(messagesPerMinute=6))
    assert table[id(routing.routes[1])] == ("routes[1]", limits(maxConnections=3))
    assert destination_limits(parse_spec({}).routing) is None  # unconfigured: no shaping at all


@pytest.mark.parametrize(
    ("shaping", "message"),
    [
        ({"messagesPerMinute": 0}, "spec.routing.shaping.messagesPerMinute"),
        ({"adaptive": {"initialBackoff": "5 minutes"}}, "spec.routing.shaping.adaptive.initialBackoff"),
        ({"maxConnections": 5000}, "spec.routing.shaping.maxConnections"),
        ({"burst": 3}, "spec.routing.shaping.burst"),
    ],
)
def test_bad_shaping_is_refused_with_the_field(shaping: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse_spec({"routing": {"shaping": shaping}})


def test_idle_destinations_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shaper_module, "MAX_STATES", 3)
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=1)
    busy = shaper.acquire("busy", lim)
    assert busy.admitted
    for key in ("a", "b"):
        assert shaper.acquire(key, lim).admitted
        shaper.release(key, lim, Feedback.DELIVERED, 0.1)
    clock.now += 10
    assert shaper.acquire("c", lim).admitted
    assert shaper.window("a") is None and shaper.window("b") is None  # idle: forgotten
    assert not shaper.acquire("busy", lim).admitted  # in flight: kept, still counted


# -- the split admission of fleet-wide pacing (delivery/gate.py with a SharedPacing) ----------------------


def test_a_held_place_counts_in_flight_until_the_fleet_answers() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=1, messagesPerMinute=60)
    assert shaper.hold("d", lim) is None  # back-off and connections allow it: held while the fleet decides
    second = shaper.hold("d", lim)
    assert second is not None and second.reason is Reason.CONNECTIONS  # the held place counts
    refused = shaper.paced("d", lim, admitted=False, delay=4.0)
    assert not refused.admitted and refused.reason is Reason.RATE and refused.not_before == clock.now + 4.0
    assert shaper.hold("d", lim) is None  # the refused place was given back
    admitted = shaper.paced("d", lim, admitted=True, delay=0.02)
    assert admitted.admitted and admitted.wait == 0.02
    shaper.release("d", lim, Feedback.DELIVERED, 0.1)
    assert shaper.hold("d", lim) is None
    shaper.unhold("d", lim)  # a cancelled decision gives its place back too
    assert shaper.hold("d", lim) is None


def test_the_fleets_line_becomes_the_local_tail() -> None:
    """A connections deferral after a fleet-wide refusal queues behind the fleet's place, not before it."""
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=1, messagesPerMinute=60)
    assert shaper.hold("d", lim) is None
    shaper.paced("d", lim, admitted=False, delay=30.0)
    assert shaper.hold("d", lim) is None
    behind = shaper.hold("d", lim)
    assert behind is not None and behind.not_before > clock.now + 30.0


def test_the_pace_request_carries_the_configured_and_the_scaled_rates() -> None:
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=4, messagesPerMinute=60, messagesPerHour=1800)
    pace = shaper.pace_request("d", lim)
    assert pace.base_intervals == (1.0, 2.0) and pace.intervals == (1.0, 2.0) and pace.max_wait == MAX_WAIT
    assert shaper.hold("d", lim) is None
    shaper.paced("d", lim, admitted=True, delay=0.0)
    shaper.release("d", lim, Feedback.THROTTLED, 0.1)  # window 4 -> 1: each rate four times slower
    assert shaper.pace_request("d", lim).intervals == (4.0, 8.0)
    assert shaper.pace_request("d", lim).base_intervals == (1.0, 2.0)  # the same counts in the fleet


def test_a_share_of_the_rate_while_the_fleet_cannot_answer() -> None:
    """Fallback: each of 3 processes paces a third of messagesPerMinute 60, one admission every 3 s."""
    clock = Clock()
    shaper = Shaper(clock)
    lim = limits(maxConnections=10, messagesPerMinute=60)
    times = []
    for _ in range(200):
        decision = shaper.acquire("d", lim, share=3)
        if decision.admitted:
            times.append(clock.now + decision.wait)
            shaper.release("d", lim, Feedback.DELIVERED, 0.01)
        clock.now += 0.25
    assert len(times) == 17  # 50 s: 0, 3, ..., 48
    assert min(b - a for a, b in itertools.pairwise(times)) >= 3.0 - MAX_WAIT
    assert shaper.acquire("e", lim).admitted and not shaper.acquire("e", lim).admitted  # share 1: the old pace
