"""Names, labels and owner references shared by every child object.

All children of one SmtpRelay are found again through these labels and collected by the garbage
collector through the ownerReference, so both are built in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smtp_relay.config.spec import API_GROUP, API_VERSION

Manifest = dict[str, Any]

APP_NAME = "relayfleet-relay"
MANAGED_BY = "relayfleet-operator"
ANNOTATION_PREFIX = "relayfleet.io"
ADMIN_PORT = 9025
"""The relay's HTTP port: /livez, /readyz, /metrics, POST /drain."""
ADMIN_PORT_NAME = "admin"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Owner:
    """The SmtpRelay being rendered: what the children need to know about it."""

    name: str
    namespace: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta["name"]),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid", "")),
            annotations=dict(meta.get("annotations") or {}),
            generation=int(meta.get("generation") or 0),
        )


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the relay pods of one SmtpRelay (immutable in a StatefulSet: never extend)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": owner.name}


def labels(owner: Owner) -> dict[str, str]:
    """The full app.kubernetes.io label set of every child."""
    return {
        **selector_labels(owner),
        "app.kubernetes.io/component": "relay",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "relayfleet",
    }


def selector_string(owner: Owner) -> str:
    """The pod selector as a string, for status.selector (the scale subresource and HPAs read it)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(owner).items())


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Makes the SmtpRelay the controller of a child, so deleting it deletes the child."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "SmtpRelay",
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, ownerReference."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }


def checksum(value: Any) -> str:
    """Stable short digest of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def volume_name(prefix: str, name: str) -> str:
    """A volume name (a DNS label) for an arbitrary object name: readable when possible, else hashed."""
    candidate = f"{prefix}-{name}"
    if _DNS_LABEL.match(candidate):
        return candidate
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def config_map_name(owner: Owner) -> str:
    return f"{owner.name}-config"


def headless_service_name(owner: Owner) -> str:
    return f"{owner.name}-pods"
