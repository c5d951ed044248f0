"""The relay's resolved runtime config: the spec plus the secret material it references.

`resolve` checks that every referenced Secret and key exists (so a missing one is an error at start
or reload, naming the field, not a surprise at the first delivery) and decodes it. Passwords live
only here and are never part of a repr or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from smtp_relay.config.manifest import ManifestError, SecretData
from smtp_relay.config.spec import SmtpRelaySpec


@dataclass(frozen=True)
class Credentials:
    """SMTP AUTH credentials for a smarthost."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM certificate chain and key of the relay's listeners."""

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to serve, resolved and checked."""

    name: str
    namespace: str
    spec: SmtpRelaySpec
    tls: TlsMaterial | None = None
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    """username -> password or bcrypt hash."""
    credentials: Mapping[str, Credentials] = field(default_factory=dict, repr=False)
    """credentialsSecret name -> credentials."""
    cas: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """caSecret name -> PEM bundle."""


def _need(secrets: Mapping[str, SecretData], name: str, keys: tuple[str, ...], where: str) -> SecretData:
    secret = secrets.get(name)
    if secret is None:
        raise ManifestError([f"{where}: Secret {name!r} not found"])
    missing = [k for k in keys if k not in secret.data]
    if missing:
        raise ManifestError([f"{where}: Secret {name!r} has no key {', '.join(missing)}"])
    return secret


def resolve(name: str, namespace: str, spec: SmtpRelaySpec, secrets: Mapping[str, SecretData]) -> RelayConfig:
    """Join a spec with its Secrets; raise ManifestError naming the field of each missing piece."""
    tls = None
    if spec.tls is not None:
        secret = _need(secrets, spec.tls.secret_name, ("tls.crt", "tls.key"), "spec.tls.secretName")
        tls = TlsMaterial(cert_pem=secret.data["tls.crt"], key_pem=secret.data["tls.key"])
    users: dict[str, str] = {}
    if spec.clients.users is not None:
        secret = _need(secrets, spec.clients.users.secret_name, (), "spec.clients.users.secretName")
        users = {user: value.decode().strip() for user, value in secret.data.items()}
    credentials: dict[str, Credentials] = {}
    cas: dict[str, bytes] = {}
    destinations = [("spec.routing.default", spec.routing.default)] + [
        (f"spec.routing.routes[{i}]", route) for i, route in enumerate(spec.routing.routes)
    ]
    for where, destination in destinations:
        for j, host in enumerate(destination.smarthosts or []):
            if host.credentials_secret:
                secret = _need(
                    secrets,
                    host.credentials_secret,
                    ("username", "password"),
                    f"{where}.smarthosts[{j}].credentialsSecret",
                )
                credentials[host.credentials_secret] = Credentials(
                    username=secret.text("username").strip(), password=secret.text("password").strip()
                )
            if host.ca_secret:
                secret = _need(secrets, host.ca_secret, ("ca.crt",), f"{where}.smarthosts[{j}].caSecret")
                cas[host.ca_secret] = secret.data["ca.crt"]
    return RelayConfig(
        name=name, namespace=namespace, spec=spec, tls=tls, users=users, credentials=credentials, cas=cas
    )
