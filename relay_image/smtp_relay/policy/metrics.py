"""Metrics of the policy chain, registered on the relay's own registry so /metrics shows them too."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase


class PolicyMetrics:
    """Checks run, verdicts by check and action, and the external scanners' latency and errors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.checks = Counter("smtp_relay_policy_checks", "Policy checks run, by check.", ["check"], registry=r)
        self.verdicts = Counter(
            "smtp_relay_policy_verdicts",
            "Verdicts other than accept, by check and action (audit mode included).",
            ["check", "action"],
            registry=r,
        )
        self.audited = Counter(
            "smtp_relay_policy_audit_overrides",
            "Verdicts audit mode did not enforce (it accepted instead), by check and action.",
            ["check", "action"],
            registry=r,
        )
        self.scanner_latency = Histogram(
            "smtp_relay_policy_scanner_seconds",
            "Time an external scanner took, by scanner.",
            ["scanner"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.scanner_errors = Counter(
            "smtp_relay_policy_scanner_errors",
            "Scanner failures (down, slow, protocol errors), by scanner.",
            ["scanner"],
            registry=r,
        )
        self._children: dict[tuple[str, ...], Counter] = {}
        self._check_children: dict[str, Counter] = {}

    def _child(self, metric: MetricWrapperBase, *values: str) -> Counter:
        """metric.labels(*values), looked up once: labels() validates and takes a lock on every call."""
        key = (metric._name, *values)
        child = self._children.get(key)
        if child is None:
            child = cast(Counter, metric.labels(*values))
            self._children[key] = child
        return child

    def count_check(self, check: str) -> None:
        """One more run of `check`; every message runs several, so this is on the hot path."""
        child = self._check_children.get(check)
        if child is None:
            child = self._check_children[check] = self._child(self.checks, check)
        child.inc()

    def count_verdict(self, check: str, action: str) -> None:
        self._child(self.verdicts, check, action).inc()
