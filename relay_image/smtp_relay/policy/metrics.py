"""Metrics of the policy chain, registered on the relay's own registry so /metrics shows them too."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
