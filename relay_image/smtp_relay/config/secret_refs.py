"""The Secrets a spec references: one walk over the spec, shared by the relay and the operator.

The relay resolves these references at start and reload (`resolved.resolve`), the operator checks
them before it rolls pods (a Degraded relay instead of a crash loop) and mounts each Secret into the
pods. All three read the same list, so a new Secret field cannot be checked by one and missed by another.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smtp_relay.config.spec import SmtpRelaySpec

TLS_KEYS = ("tls.crt", "tls.key")
CREDENTIAL_KEYS = ("username", "password")
CA_KEYS = ("ca.crt",)
REDIS_KEYS = ("password",)
"""The limits Redis's Secret: password, and optionally username (a Redis 6 ACL user)."""


class SecretUse(enum.Enum):
    """What the relay reads a referenced Secret for."""

    TLS = "tls"
    """The listeners' certificate chain and key."""
    USERS = "users"
    """SMTP AUTH users: one key per username."""
    CREDENTIALS = "credentials"
    """A smarthost's SMTP AUTH username and password."""
    CA = "ca"
    """The CA bundle that signs a smarthost's (or the limits Redis's) certificate."""
    REDIS = "redis"
    """The limits Redis's password and optional username."""


@dataclass(frozen=True)
class SecretRef:
    """One Secret reference in a spec: where it is, which Secret, and what that Secret must hold."""

    field: str
    """Path of the referencing field, e.g. `spec.routing.routes[0].smarthosts[1].caSecret`."""
    name: str
    """The Secret's name (in the SmtpRelay's namespace)."""
    keys: tuple[str, ...]
    """Keys the Secret must have."""
    use: SecretUse
    any_key: bool = False
    """True when any one key will do (the users Secret: one key per user)."""


def secret_refs(spec: SmtpRelaySpec) -> list[SecretRef]:
    """Every Secret reference of the spec, in field order: tls, clients.users, then each smarthost of
    the default destination and the routes (credentials before CA), then the limits Redis (password before
    CA). A Secret named twice appears twice."""
    refs: list[SecretRef] = []
    if spec.tls is not None:
        refs.append(SecretRef("spec.tls.secretName", spec.tls.secret_name, TLS_KEYS, SecretUse.TLS))
    if spec.clients.users is not None:
        users = spec.clients.users.secret_name
        refs.append(SecretRef("spec.clients.users.secretName", users, (), SecretUse.USERS, any_key=True))
    destinations = [("spec.routing.default", spec.routing.default)] + [
        (f"spec.routing.routes[{i}]", route) for i, route in enumerate(spec.routing.routes)
    ]
    for where, destination in destinations:
        for j, host in enumerate(destination.smarthosts or []):
            if host.credentials_secret:
                field = f"{where}.smarthosts[{j}].credentialsSecret"
                refs.append(SecretRef(field, host.credentials_secret, CREDENTIAL_KEYS, SecretUse.CREDENTIALS))
            if host.ca_secret:
                refs.append(SecretRef(f"{where}.smarthosts[{j}].caSecret", host.ca_secret, CA_KEYS, SecretUse.CA))
    redis = spec.limits.redis if spec.limits.backend == "redis" else None
    if redis is not None and redis.secret_name:
        refs.append(SecretRef("spec.limits.redis.secretName", redis.secret_name, REDIS_KEYS, SecretUse.REDIS))
    if redis is not None and redis.ca_secret:
        refs.append(SecretRef("spec.limits.redis.caSecret", redis.ca_secret, CA_KEYS, SecretUse.CA))
    return refs
