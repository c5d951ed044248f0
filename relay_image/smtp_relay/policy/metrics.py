"""Metrics of the policy chain, registered on the relay's own registry so /metrics shows them too."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class PolicyMetrics:
    """Checks run, verdicts by check and action, and the external scanners' latency and errors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
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
        self._check_children: dict[str, Counter] = {}
        self._verdict_children: dict[tuple[str, str], Counter] = {}

    # labels() validates its values and takes a lock on every call; every message runs several checks,
    # so the labelled children are looked up once and kept.

    def count_check(self, check: str) -> None:
        """One more run of `check`."""
        child = self._check_children.get(check)
        if child is None:
            child = self._check_children[check] = self.checks.labels(check)
        child.inc()

    def count_verdict(self, check: str, action: str) -> None:
        """One more verdict other than accept."""
        child = self._verdict_children.get((check, action))
        if child is None:
            child = self._verdict_children[check, action] = self.verdicts.labels(check, action)
        child.inc()
