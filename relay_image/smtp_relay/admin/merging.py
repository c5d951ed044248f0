"""Adding the workers' figures up into the fleet's: one Prometheus exposition, one queue summary.

Pure: the supervisor's HTTP side fetches the texts and JSON, these functions only combine them.
Counters, histograms and most gauges add up; "oldest" ages and `smtp_relay_draining` take the maximum
(the fleet is as old, and as draining, as its worst worker), as does `smtp_relay_limits_share` (every
worker divides by the same number); a `_created` timestamp takes the minimum
(the fleet's counter exists since its first worker's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def _combiner(family: str, sample: str) -> Callable[[float, float], float]:
    """How two workers' values of one sample make the fleet's."""
    if sample.endswith("_created"):
        return min
    if "oldest" in family or family in ("smtp_relay_draining", "smtp_relay_limits_share"):
        return max
    return lambda a, b: a + b


class _FixedFamilies(Collector):
    """A collector returning families computed beforehand (so `generate_latest` writes the merge)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_metrics(texts: Iterable[str]) -> bytes:
    """Merge Prometheus text expositions: samples with the same name and labels are combined
    (summed; max for "oldest" gauges and `smtp_relay_draining`; min for `_created`)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            if merged.type != family.type:
                log.warning("metric %s is a %s here but a %s elsewhere: skipped", family.name, family.type, merged.type)
                continue
            acc = values.setdefault(family.name, {})  # insertion order keeps histogram buckets in order
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                acc[key] = _combiner(family.name, sample.name)(acc[key], sample.value) if key in acc else sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values.get(name, {}).items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FixedFamilies(list(families.values())))
    return generate_latest(registry)


def merge_queues(figures: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add queue figures up; "oldest" ages take the maximum, and so does `quarantined` (the workers share one
    quarantine, so each reports all of it); anything not a number is left out."""
    out: dict[str, Any] = {}
    for queue in figures:
        for key, value in queue.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key not in out:
                out[key] = value
            else:
                out[key] = max(out[key], value) if "oldest" in key or key == "quarantined" else out[key] + value
    return out
