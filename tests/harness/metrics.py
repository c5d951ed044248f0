"""Reading a Prometheus sample in tests (0.0 when the labelled child was never touched)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of one sample, 0.0 when it does not exist yet."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
