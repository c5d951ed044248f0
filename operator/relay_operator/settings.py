"""Operator settings, read once from environment variables.

One frozen dataclass, so rendering stays pure (settings are an argument, not a global) and the Helm
chart sets everything through `env:`. Every attribute documents its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from smtp_relay.config.fields import split_nameserver


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as a matchLabels map; refuses an entry without `=` or with an empty key."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"not a label selector of k=v pairs: {text!r}")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True)
class Settings:
    """What the operator needs beyond each SmtpRelay's spec."""

    relay_image: str = "ghcr.io/relayfleet/relay:0.1.0"
    """RELAYFLEET_RELAY_IMAGE: relay container image used when spec.image is empty."""

    resync_seconds: float = 60.0
    """RELAYFLEET_RESYNC_SECONDS: how often each SmtpRelay's status is refreshed even without events."""

    termination_grace_seconds: int = 600
    """RELAYFLEET_TERMINATION_GRACE_SECONDS: time a relay pod gets to drain its connections and queue
    before it is killed; long, because a pod stopping mid-delivery only delays mail, never loses it."""

    service_monitor: bool = False
    """RELAYFLEET_SERVICE_MONITOR: also render a Prometheus Operator ServiceMonitor per SmtpRelay."""

    network_policy: bool = False
    """RELAYFLEET_NETWORK_POLICY: also render a NetworkPolicy admitting only the listener and admin ports."""

    operator_namespace: str = ""
    """RELAYFLEET_OPERATOR_NAMESPACE: the operator's own namespace (the chart sets it from the downward
    API); the NetworkPolicy admits the admin port from operator pods of this namespace (empty: of any)."""

    operator_pod_labels: str = "app.kubernetes.io/name=relayfleet-operator"
    """RELAYFLEET_OPERATOR_POD_LABELS: labels of the operator's pods (`k=v,k=v`), for the NetworkPolicy."""

    monitoring_namespaces: str = "kubernetes.io/metadata.name=monitoring"
    """RELAYFLEET_MONITORING_NAMESPACES: namespace labels (`k=v,k=v`) of the monitoring stack, admitted to
    the admin port by the NetworkPolicy (Prometheus scrapes /metrics there)."""

    dns_nameservers: str = ""
    """RELAYFLEET_DNS_NAMESERVERS: the resolver of every SendingDomain's DNS checks without spec.dns.nameservers,
    comma-separated host[:port]; empty uses the system resolver."""

    domain_recheck_seconds: float = 300.0
    """RELAYFLEET_DOMAIN_RECHECK_SECONDS: how often each SendingDomain's records are checked again (doubled, up to
    an hour, while DNS does not answer)."""

    dns_outage_grace_seconds: float = 86400.0
    """RELAYFLEET_DNS_OUTAGE_GRACE_SECONDS: how long a verified domain stays verified while DNS does not answer
    (TemporaryFailure) after its last full success: an outage of the resolver must not stop the mail."""

    telemetry_concurrency: int = 64
    """RELAYFLEET_TELEMETRY_CONCURRENCY: queue-figure requests to relay pods in flight at once, all relays together."""

    telemetry_timeout_seconds: float = 2.0
    """RELAYFLEET_TELEMETRY_TIMEOUT_SECONDS: how long one pod may take to answer before it counts as unreachable."""

    metrics_enabled: bool = True
    """RELAYFLEET_METRICS_ENABLED: serve the operator's own Prometheus metrics (metrics.py) on metrics_port."""

    metrics_port: int = 8081
    """RELAYFLEET_METRICS_PORT: the port of the operator's /metrics (kopf's liveness endpoint has its own, 8080
    in the chart); 0 takes a free port from the OS."""

    metrics_host: str = "0.0.0.0"
    """RELAYFLEET_METRICS_HOST: the address /metrics listens on (all of the pod's, so Prometheus reaches it)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from RELAYFLEET_* variables; unset or empty ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(f"RELAYFLEET_{field.name.upper()}", "")
            if not raw:
                continue
            try:
                if field.type == "bool":
                    values[field.name] = _bool(raw)
                elif field.type == "int":
                    values[field.name] = int(raw)
                elif field.type == "float":
                    values[field.name] = float(raw)
                else:
                    values[field.name] = raw
            except ValueError as exc:
                raise ValueError(f"RELAYFLEET_{field.name.upper()}: {exc}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        for name in ("operator_pod_labels", "monitoring_namespaces"):
            try:
                parse_labels(getattr(settings, name))
            except ValueError as exc:
                raise ValueError(f"RELAYFLEET_{name.upper()}: {exc}") from None
        if settings.resync_seconds <= 0 or settings.termination_grace_seconds < 0:
            raise ValueError("RELAYFLEET_RESYNC_SECONDS must be > 0 and RELAYFLEET_TERMINATION_GRACE_SECONDS >= 0")
        if settings.domain_recheck_seconds <= 0 or settings.dns_outage_grace_seconds < 0:
            raise ValueError(
                "RELAYFLEET_DOMAIN_RECHECK_SECONDS must be > 0 and RELAYFLEET_DNS_OUTAGE_GRACE_SECONDS >= 0"
            )
        if not 0 <= settings.metrics_port <= 65535:
            raise ValueError(f"RELAYFLEET_METRICS_PORT must be a port number (0-65535), not {settings.metrics_port}")
        for item in settings.nameservers():
            try:
                split_nameserver(item)
            except ValueError:
                raise ValueError(f"RELAYFLEET_DNS_NAMESERVERS: {item!r} is not an IP address[:port]") from None
        return settings

    def nameservers(self) -> list[str]:
        """dns_nameservers as the list `DnsSpec.nameservers` takes."""
        return [item.strip() for item in self.dns_nameservers.split(",") if item.strip()]
