"""What a watch event on one of an SmtpRelay's children asks of the operator: pure, so every case is tested.

Every child kind is watched (label-selected on the server: only the operator's own children are streamed), so a
deleted Service or a hand-edited ConfigMap is put back. The events the operator caused itself (the versions
`Kube.apply` wrote or found unchanged, `kube.SeenVersions`) and status-only updates by the cluster's controllers
(same generation, labels and owners: `merge.fingerprint`) need no reconcile; a StatefulSet's status updates
only refresh the SmtpRelay's status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from relay_operator.merge import fingerprint

Action = Literal["reconcile", "status", "ignore"]

CHILD_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "statefulsets"),
    ("policy", "v1", "poddisruptionbudgets"),
)
"""(group, version, plural) of the children every SmtpRelay has."""
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
SERVICE_MONITORS = ("monitoring.coreos.com", "v1", "servicemonitors")


def child_event_action(event_type: str | None, body: Mapping[str, Any], seen: tuple[str, str | None] | None) -> Action:
    """`event_type` is the watch's (None for kopf's initial listing); `seen` what this operator last applied."""
    meta = body.get("metadata") or {}
    statefulset = body.get("kind") == "StatefulSet"
    if event_type is None:
        return "ignore"  # the initial listing: nothing happened, and each relay is reconciled on resume anyway
    if event_type == "DELETED":
        return "reconcile"  # a child is gone: put it back (unless its SmtpRelay is going too)
    if event_type == "ADDED":
        return "ignore"  # a child came to exist (the operator created it): nothing drifted
    if meta.get("deletionTimestamp"):
        return "ignore"  # being deleted: its DELETED event follows
    if seen is not None:
        version, print_ = seen
        if version == str(meta.get("resourceVersion") or ""):
            return "ignore"  # the operator's own write
        if print_ is not None and fingerprint(body) == print_:
            return "status" if statefulset else "ignore"  # only a controller's status report moved
    return "reconcile"


def owner_name(body: Mapping[str, Any]) -> str | None:
    """The SmtpRelay that controls a child, by its controller ownerReference."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "SmtpRelay" and ref.get("controller"):
            return str(ref.get("name"))
    return None
