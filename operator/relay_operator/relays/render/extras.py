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
from relay_operator.settings import Settings, parse_labels
from smtp_relay.config.spec import SmtpRelaySpec

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the apiserver on every namespace (1.22+): selects one namespace by its name."""


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


def build_networkpolicy(owner: Owner, spec: SmtpRelaySpec, settings: Settings) -> Manifest:
    """NetworkPolicy `<name>`: SMTP from anywhere (the relay's own policy decides); the admin port only
    from the operator's pods (drain, queue figures), the relay's own pods (a draining pod hands its queue to
    those that stay) and the monitoring namespaces (metrics). The admin
    API needs its token as well: the policy narrows who can even try. Egress stays open: MX delivery
    goes anywhere."""
    smtp: list[dict[str, Any]] = [{"port": lst.port, "protocol": "TCP"} for lst in spec.listeners]
    operator_pods: dict[str, Any] = {"podSelector": {"matchLabels": parse_labels(settings.operator_pod_labels)}}
    operator_pods["namespaceSelector"] = (
        {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}} if settings.operator_namespace else {}
    )
    admin_from = [operator_pods, {"podSelector": {"matchLabels": selector_labels(owner)}}]  # hand-off between pods
    monitoring = parse_labels(settings.monitoring_namespaces)
    if monitoring:  # empty: no monitoring peer (an empty namespaceSelector would admit every namespace)
        admin_from.append({"namespaceSelector": {"matchLabels": monitoring}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, owner.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": smtp},
                {"from": admin_from, "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}]},
            ],
        },
    }
