"""`status.queue` of an SmtpRelay from what its pods answered: pure, so every figure is unit-tested.

Each pod's `/queue` gives depth, oldest ages and counters since the relay started; rates come from two samples
of the same pod (a restarted pod's counters start again, and its first sample gives no rate rather than a
negative one). Pods that did not answer are counted and named with the reason, never guessed: the depth is the
sum over the pods that answered, and `queueDepth` (the Queue printer column) is left out when none did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

COUNTERS = {
    "received": "received_total",
    "delivered": "delivered_total",
    "deliveryFailures": "delivery_failures_total",
    "bounced": "bounced_total",
    "rejected": "rejected_total",
}
"""status.queue.ratesPerMinute key -> the relay's /queue counter."""


@dataclass(frozen=True)
class PodSample:
    """One pod's answer (`figures` is /queue's `queue` object) or why there is none (`error`)."""

    name: str
    uid: str
    at: float
    """Monotonic seconds when it was taken."""
    figures: Mapping[str, Any] | None = None
    error: str = ""
    config_digest: str = ""
    """Which config the pod runs (`smtp_relay.config.source.config_digest` of the file it loaded)."""


def _number(figures: Mapping[str, Any], key: str) -> float:
    value = figures.get(key, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _rates(current: PodSample, previous: PodSample | None) -> dict[str, float] | None:
    if previous is None or previous.figures is None or current.figures is None or current.at <= previous.at:
        return None
    minutes = (current.at - previous.at) / 60.0
    rates = {}
    for name, key in COUNTERS.items():
        delta = _number(current.figures, key) - _number(previous.figures, key)
        if delta < 0:
            return None  # the relay restarted between the samples: its counters began again
        rates[name] = delta / minutes
    return rates


def summarize(
    samples: Sequence[PodSample], previous: Mapping[str, PodSample]
) -> tuple[dict[str, Any], dict[str, PodSample]]:
    """(status.queue, the samples to keep for the next rates, by pod uid)."""
    answered = [s for s in samples if s.figures is not None]
    figures = [s.figures for s in answered if s.figures is not None]
    queue: dict[str, Any] = {
        "podsReporting": len(answered),
        "podsUnreachable": len(samples) - len(answered),
        "unreachable": [f"{s.name}: {s.error}" for s in samples if s.figures is None],
    }
    if figures:
        active = sum(_number(f, "active") for f in figures)
        deferred = sum(_number(f, "deferred") for f in figures)
        oldest = max(max(_number(f, "oldest_active_age"), _number(f, "oldest_deferred_age")) for f in figures)
        queue |= {
            "depth": int(active + deferred),
            "active": int(active),
            "deferred": int(deferred),
            "quarantined": int(sum(_number(f, "quarantined") for f in figures)),
            "oldestAgeSeconds": int(oldest),
        }
    configs: dict[str, list[str]] = {}
    for sample in answered:
        configs.setdefault(sample.config_digest, []).append(sample.name)
    if configs:
        queue["configDigests"] = configs
    per_pod = [r for s in answered if (r := _rates(s, previous.get(s.uid))) is not None]
    if per_pod:
        queue["ratesPerMinute"] = {name: round(sum(r[name] for r in per_pod), 2) for name in COUNTERS}
    return queue, {s.uid: s for s in answered}
