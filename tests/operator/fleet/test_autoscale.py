"""Autoscaling decisions on a virtual clock: up at once, down after the stabilization window, never down blind."""

from __future__ import annotations

from relay_operator.fleet.autoscale import Stabilizer, decision, recommend
from smtp_relay.config.spec import AutoscalingSpec

SPEC = AutoscalingSpec(min_replicas=2, max_replicas=6, target_queue_per_replica=100, scale_down_stabilization="5m")


def queue(depth: int, unreachable: int = 0) -> dict[str, int]:
    return {"depth": depth, "podsReporting": 2, "podsUnreachable": unreachable}


def test_the_recommendation_is_the_queue_over_the_target_within_bounds() -> None:
    assert [recommend(d, 100, 2, 6) for d in (0, 1, 200, 201, 450, 10_000)] == [2, 2, 2, 3, 5, 6]


def test_up_at_once_down_after_the_window_and_not_while_a_pod_is_silent() -> None:
    stabilizer = Stabilizer()
    assert decision(stabilizer, 0.0, 2, queue(450), SPEC) == 5  # a backlog: up at once
    assert decision(stabilizer, 60.0, 5, queue(50), SPEC) == 5  # drained fast: the window still remembers 5
    assert decision(stabilizer, 240.0, 5, queue(50), SPEC) == 5
    assert decision(stabilizer, 301.0, 5, queue(50), SPEC) == 2  # five minutes of low recommendations: down
    assert decision(stabilizer, 400.0, 2, queue(700), SPEC) == 6  # capped at maxReplicas
    later = Stabilizer()
    assert decision(later, 0.0, 4, queue(0, unreachable=1), SPEC) == 4, "a depth not fully known: no scale-down"
    assert decision(later, 0.0, 4, {"podsReporting": 0}, SPEC) is None, "no figures: no decision"
