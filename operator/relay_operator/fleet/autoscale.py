"""Queue-aware autoscaling decisions: pure, so every step is tested on a virtual clock.

The recommendation is ceil(depth / targetQueuePerReplica) within [minReplicas, maxReplicas], as a
HorizontalPodAutoscaler computes from a per-pod target. Up at once: a backlog grows while the fleet waits.
Down only to the highest recommendation seen during the last scaleDownStabilization window (the HPA's
stabilization), so the tail of a burst does not take pods away and bring them back. A depth that is not
fully known (a pod did not answer) never scales down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smtp_relay.config.spec import AutoscalingSpec
from smtp_relay.config.units import parse_duration


def recommend(depth: int, target: int, low: int, high: int) -> int:
    """Replicas for `depth` queued messages at `target` per pod, clamped to [low, high]."""
    return max(low, min(high, math.ceil(depth / target) if depth > 0 else low))


@dataclass
class Stabilizer:
    """The recommendations of one SmtpRelay over time (monotonic seconds)."""

    history: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: float, current: int, recommended: int, window: float, complete: bool) -> int:
        """The replicas to set now; `complete`: every pod reported, so the depth is the whole queue."""
        self.history = [(t, r) for t, r in self.history if now - t <= window]
        self.history.append((now, recommended))
        if recommended >= current:
            return recommended
        if not complete:
            return current
        return min(current, max(r for _, r in self.history))


def decision(
    stabilizer: Stabilizer, now: float, current: int, queue: Mapping[str, Any], spec: AutoscalingSpec
) -> int | None:
    """The replicas for an SmtpRelay with spec.autoscaling given its status.queue; None: no figures to go by."""
    if not queue.get("podsReporting"):
        return None
    recommended = recommend(int(queue.get("depth") or 0), spec.target_queue_per_replica, spec.min_replicas,
                            spec.max_replicas)  # fmt: skip
    window = parse_duration(spec.scale_down_stabilization)
    return stabilizer.decide(now, current, recommended, window, complete=not queue.get("podsUnreachable"))
