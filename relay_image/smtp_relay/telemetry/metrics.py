"""Prometheus metrics of the relay, one registry per relay instance.

A registry per instance (not the global default) lets tests run several relays in one process and
read each one's figures. Every stage takes a `RelayMetrics` and records into it; `/metrics` exposes it.
Names follow Prometheus conventions: `smtp_relay_` prefix, `_total` counters, base units.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """All metrics of one relay instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "smtp_relay_received_messages", "Messages accepted with a 250 (durably spooled).", registry=r
        )
        self.received_bytes = Counter("smtp_relay_received_bytes", "Bytes of accepted messages.", registry=r)
        self.delivered = Counter(
            "smtp_relay_delivered_recipients", "Recipients delivered, by route kind.", ["route"], registry=r
        )
        self.deferred = Counter(
            "smtp_relay_deferred_recipients",
            "Recipients that failed temporarily and wait for a retry.",
            registry=r,
        )
        self.shaped = Counter(
            "smtp_relay_shaped_recipients",
            "Recipients held back by traffic shaping (not a failed attempt), by reason: connections, rate, backoff.",
            ["reason"],
            registry=r,
        )
        self.shaping_window = Gauge(
            "smtp_relay_shaping_window",
            "Concurrency window of each destination below its maxConnections (backed off or recovering; at most"
            " 50 destinations are listed, the gone ones are removed on recovery).",
            ["destination"],
            registry=r,
        )
        self.shaping_backed_off = Gauge(
            "smtp_relay_shaping_reduced_destinations",
            "Destinations whose concurrency window is below their maxConnections (all of them, listed or not).",
            registry=r,
        )
        self.shaping_backoffs = Counter(
            "smtp_relay_shaping_backoffs", "Times a destination was paused after a 421 or a 4xx.", registry=r
        )
        self.bounced = Counter(
            "smtp_relay_bounced_recipients",
            "Recipients given up on (5xx or maxAge): a DSN went to the sender.",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "smtp_relay_rejected", "SMTP commands or messages refused, by reason.", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "smtp_relay_queue_messages", "Messages in the spool, by queue state.", ["state"], registry=r
        )
        self.queue_oldest = Gauge(
            "smtp_relay_queue_oldest_age_seconds",
            "Age of the oldest message, by queue state.",
            ["state"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "smtp_relay_delivery_latency_seconds",
            "Time from the 250 to delivery of all recipients.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 14400, 86400),
            registry=r,
        )
        self.commit_latency = Histogram(
            "smtp_relay_spool_commit_seconds",
            "Time from end of DATA to the fsync that allows the 250.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self.active_connections = Gauge(
            "smtp_relay_active_connections", "Open SMTP connections, by listener.", ["listener"], registry=r
        )
        self.auth_password_checks = Counter(
            "smtp_relay_auth_password_checks",
            "AUTH password verifications, by kind: bcrypt (every check, known user or not, when the users"
            " Secret holds a bcrypt hash) or plain (a plaintext-only Secret).",
            ["kind"],
            registry=r,
        )
        self.draining = Gauge("smtp_relay_draining", "1 while the relay refuses new mail to drain.", registry=r)
        self.handed_off = Counter(
            "smtp_relay_handoff_sent_messages",
            "Messages a draining relay handed to a relay that stays (deleted here after the peer's 200).",
            registry=r,
        )
        self.handoff_failures = Counter(
            "smtp_relay_handoff_failures",
            "Hand-offs that did not happen, by reason (refused: the peer answered an error; unreachable); the"
            " message stays and is delivered or handed off later.",
            ["reason"],
            registry=r,
        )
        self.handoff_received = Counter(
            "smtp_relay_handoff_received_messages",
            "Messages taken over from a draining relay (durable before the 200), duplicates not included.",
            registry=r,
        )
        self.handoff_duplicates = Counter(
            "smtp_relay_handoff_duplicates",
            "Hand-offs of a message this relay had already taken over (a retry after a lost answer): answered"
            " 200 without queueing it again.",
            registry=r,
        )
        self.dkim_signed = Counter(
            "smtp_relay_dkim_signed_messages",
            "Messages DKIM-signed, by signing domain (d=) and algorithm (one count per signature).",
            ["domain", "algorithm"],
            registry=r,
        )
        self.dkim_unsigned = Counter(
            "smtp_relay_dkim_unsigned_messages",
            "Accepted messages sent without a signature of ours, by reason (no_sending_domain, unverified, ...).",
            ["reason"],
            registry=r,
        )
        self.dkim_failures = Counter(
            "smtp_relay_dkim_signing_failures",
            "Signatures that failed to be made (the message went on without them), by domain and algorithm.",
            ["domain", "algorithm"],
            registry=r,
        )


def counter_total(counter: Counter) -> float:
    """The sum of a counter over all its label values (prometheus_client keeps one child per label set)."""
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


class LimitsMetrics:
    """Where the rate-limit and AUTH-throttle decisions were taken (spec.limits): Redis, or the local fallback."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fallback = Gauge(
            "smtp_relay_limits_fallback",
            "1 while spec.limits.backend is redis but Redis cannot be reached: limits are local, each divided by"
            " the processes sharing it (replicas x workers).",
            registry=r,
        )
        self.fallbacks = Counter(
            "smtp_relay_limits_fallbacks", "Times the relay lost Redis and fell back to local limits.", registry=r
        )
        self.decisions = Counter(
            "smtp_relay_limits_decisions",
            "Fleet-wide limit decisions, by where they were taken (redis, or local while falling back).",
            ["backend"],
            registry=r,
        )
        self.shaping_decisions = Counter(
            "smtp_relay_shaping_rate_decisions",
            "Traffic-shaping rate decisions with spec.limits.backend redis, by where they were taken (redis, or"
            " local, each rate divided by replicas x workers, while falling back).",
            ["backend"],
            registry=r,
        )
        self.share = Gauge(
            "smtp_relay_limits_share", "Processes one fleet-wide limit is divided by while falling back.", registry=r
        )
