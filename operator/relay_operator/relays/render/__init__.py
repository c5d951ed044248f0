"""Pure rendering: an SmtpRelay's spec and metadata in, Kubernetes manifests (dicts) out.

Nothing here does I/O, so every builder is unit-tested with plain data and `reconcile` can compare
what it would write with what exists before writing anything.
"""

from __future__ import annotations

from relay_operator.relays.render.common import (
    Manifest,
    Owner,
    labels,
    owner_reference,
    selector_labels,
    selector_string,
)
from relay_operator.relays.render.config import build_configmap, relay_document
from relay_operator.relays.render.extras import build_networkpolicy, build_pdb, build_servicemonitor
from relay_operator.relays.render.services import build_headless_service, build_service, endpoint, service_options
from relay_operator.relays.render.statefulset import build_statefulset, referenced_secrets, restart_checksum
from relay_operator.settings import Settings
from smtp_relay.config.spec import SmtpRelaySpec

__all__ = [
    "Manifest",
    "Owner",
    "build_all",
    "build_configmap",
    "build_headless_service",
    "build_networkpolicy",
    "build_pdb",
    "build_service",
    "build_servicemonitor",
    "build_statefulset",
    "endpoint",
    "labels",
    "owner_reference",
    "referenced_secrets",
    "relay_document",
    "restart_checksum",
    "selector_labels",
    "selector_string",
    "service_options",
]


def build_all(owner: Owner, spec: SmtpRelaySpec, settings: Settings) -> list[Manifest]:
    """Every child of one SmtpRelay, in the order they should be applied (config before pods)."""
    children = [
        build_configmap(owner, spec),
        build_headless_service(owner, spec),
        build_service(owner, spec),
        build_statefulset(owner, spec, settings),
        build_pdb(owner),
    ]
    if settings.service_monitor:
        children.append(build_servicemonitor(owner))
    if settings.network_policy:
        children.append(build_networkpolicy(owner, spec))
    return children
