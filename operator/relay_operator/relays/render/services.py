"""The Services in front of the relay pods.

The client Service carries one port per listener. Its type and `externalTrafficPolicy` come from
annotations on the SmtpRelay (an operator-side knob, not part of the relay's spec): `Local` keeps the
client's source IP, which the relay's policy (allowedNetworks, SPF, DNSBL) depends on. The headless
Service gives each pod a stable DNS name and carries the admin port for metrics scraping.
"""

from __future__ import annotations

from typing import Any

from relay_operator.relays.render.common import (
    ADMIN_PORT,
    ADMIN_PORT_NAME,
    ANNOTATION_PREFIX,
    Manifest,
    Owner,
    headless_service_name,
    metadata,
    selector_labels,
)
from smtp_relay.config.spec import SmtpRelaySpec

SERVICE_TYPE = f"{ANNOTATION_PREFIX}/service-type"
"""SmtpRelay annotation: ClusterIP (default), NodePort or LoadBalancer."""
EXTERNAL_TRAFFIC_POLICY = f"{ANNOTATION_PREFIX}/external-traffic-policy"
"""SmtpRelay annotation: Local (default for NodePort/LoadBalancer: keeps client IPs) or Cluster."""
SERVICE_ROLE = f"{ANNOTATION_PREFIX}/service"
"""Label telling the two Services apart (a ServiceMonitor selects the headless one)."""

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TRAFFIC_POLICIES = ("Local", "Cluster")


class ServiceOptionError(ValueError):
    """An annotation with a value the Service cannot take; the message names it and the choices."""


def service_options(owner: Owner) -> tuple[str, str | None]:
    """(type, externalTrafficPolicy or None) from the SmtpRelay's annotations."""
    kind = owner.annotations.get(SERVICE_TYPE, "ClusterIP")
    if kind not in SERVICE_TYPES:
        raise ServiceOptionError(f"annotation {SERVICE_TYPE}: {kind!r} is not one of {', '.join(SERVICE_TYPES)}")
    policy = owner.annotations.get(EXTERNAL_TRAFFIC_POLICY, "Local")
    if policy not in TRAFFIC_POLICIES:
        raise ServiceOptionError(
            f"annotation {EXTERNAL_TRAFFIC_POLICY}: {policy!r} is not one of {', '.join(TRAFFIC_POLICIES)}"
        )
    return kind, (policy if kind != "ClusterIP" else None)


def _listener_ports(spec: SmtpRelaySpec) -> list[dict[str, Any]]:
    return [{"name": lst.name, "port": lst.port, "targetPort": lst.name, "protocol": "TCP"} for lst in spec.listeners]


def build_service(owner: Owner, spec: SmtpRelaySpec) -> Manifest:
    """Service `<name>`: the address clients send mail to."""
    kind, policy = service_options(owner)
    service_spec: dict[str, Any] = {
        "type": kind,
        "selector": selector_labels(owner),
        "ports": _listener_ports(spec),
    }
    if policy is not None:
        service_spec["externalTrafficPolicy"] = policy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, owner.name, {SERVICE_ROLE: "clients"}),
        "spec": service_spec,
    }


def build_headless_service(owner: Owner, spec: SmtpRelaySpec) -> Manifest:
    """Service `<name>-pods`: per-pod DNS for the StatefulSet and the admin port for metrics."""
    ports = _listener_ports(spec)
    ports.append({"name": ADMIN_PORT_NAME, "port": ADMIN_PORT, "targetPort": ADMIN_PORT_NAME, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, headless_service_name(owner), {SERVICE_ROLE: "pods"}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner),
            "ports": ports,
        },
    }


def endpoint(owner: Owner, spec: SmtpRelaySpec) -> str:
    """host:port of the first listener, as in-cluster clients reach it."""
    return f"{owner.name}.{owner.namespace}.svc:{spec.listeners[0].port}"
