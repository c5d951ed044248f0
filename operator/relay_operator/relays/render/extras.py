"""PodDisruptionBudget, and the optional ServiceMonitor and NetworkPolicy.

The budget lets node drains take one relay at a time: each pod drains its connections before it
stops, so a fleet never loses more than one pod's capacity to maintenance.
"""

from __future__ import annotations

from typing import Any

from relay_operator.relays.render.common import (
    ADMIN_PORT,
    ADMIN_PORT_NAME,
    Manifest,
    Owner,
    metadata,
    selector_labels,
)
from relay_operator.relays.render.services import SERVICE_ROLE
from smtp_relay.config.spec import SmtpRelaySpec


def build_pdb(owner: Owner) -> Manifest:
    """PodDisruptionBudget `<name>`: at most one relay pod voluntarily down."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, owner.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


def build_servicemonitor(owner: Owner) -> Manifest:
    """ServiceMonitor `<name>`: Prometheus scrapes /metrics of every pod through the headless Service."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(owner, owner.name),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(owner), SERVICE_ROLE: "pods"}},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": ADMIN_PORT_NAME, "path": "/metrics", "interval": "30s"}],
        },
    }


def build_networkpolicy(owner: Owner, spec: SmtpRelaySpec) -> Manifest:
    """NetworkPolicy `<name>`: SMTP from anywhere (the relay's own policy decides), admin port from
    the namespace only (metrics, drain). Egress stays open: MX delivery goes anywhere."""
    smtp: list[dict[str, Any]] = [{"port": lst.port, "protocol": "TCP"} for lst in spec.listeners]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, owner.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": smtp},
                {"from": [{"podSelector": {}}], "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}]},
            ],
        },
    }
