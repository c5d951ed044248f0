"""The specs and owner every renderer test builds from."""

from __future__ import annotations

from typing import Any

from relay_operator.relays.render.common import Owner
from relay_operator.settings import Settings
from smtp_relay.config.manifest import parse_spec

OWNER = Owner(name="outbound", namespace="mail", uid="uid-1", generation=3)
SETTINGS = Settings()
FULL = parse_spec(
    {
        "replicas": 3,
        "listeners": [
            {"name": "relay", "port": 2525},
            {"name": "submission", "port": 587, "tls": "starttls", "requireTLS": True, "auth": "required"},
        ],
        "tls": {"secretName": "outbound-tls"},
        "clients": {"users": {"secretName": "outbound-users"}},
        "routing": {
            "default": {"smarthosts": [{"host": "up.example", "credentialsSecret": "creds", "caSecret": "up-ca"}]},
            "routes": [
                {"match": {"senderDomains": ["x.example"]}, "smarthosts": [{"host": "b", "credentialsSecret": "creds"}]}
            ],
        },
        "queue": {"storage": "10Gi", "storageClassName": "fast"},
        "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}},
    }
)
MINIMAL = parse_spec({})
LABELS = {
    "app.kubernetes.io/name": "relayfleet-relay",
    "app.kubernetes.io/instance": "outbound",
    "app.kubernetes.io/component": "relay",
    "app.kubernetes.io/managed-by": "relayfleet-operator",
    "app.kubernetes.io/part-of": "relayfleet",
}


def pod(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec
