"""The relay's resolved runtime config: the spec plus the secret material it references.

`resolve` checks that every referenced Secret and key exists (so a missing one is an error at start
or reload, naming the field, not a surprise at the first delivery) and decodes it. The references
come from `secret_refs`, the walk the operator checks and mounts with. Passwords live only here and
are never part of a repr or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from smtp_relay.config.domains import SendingDomains
from smtp_relay.config.manifest import ManifestError, SecretData
from smtp_relay.config.secret_refs import SecretUse, secret_refs
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
    redis_credentials: Credentials | None = field(default=None, repr=False)
    """spec.limits.redis.secretName's password (username empty: the default user)."""
    sending_domains: SendingDomains | None = None
    """The SendingDomains of this relay and their signing keys; None while the verified set is unknown."""
    digest: str = ""
    """sha256 (16 hex digits) of the manifest file as loaded: the operator compares it with the ConfigMap it
    rendered, so status can say whether every pod runs the current config."""


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
    users: dict[str, str] = {}
    credentials: dict[str, Credentials] = {}
    cas: dict[str, bytes] = {}
    redis_credentials = None
    for ref in secret_refs(spec):
        secret = _need(secrets, ref.name, ref.keys, ref.field)
        if ref.use is SecretUse.TLS:
            tls = TlsMaterial(cert_pem=secret.data["tls.crt"], key_pem=secret.data["tls.key"])
        elif ref.use is SecretUse.USERS:
            users = {user: value.decode().strip() for user, value in secret.data.items()}
        elif ref.use is SecretUse.CREDENTIALS:
            credentials[ref.name] = Credentials(
                username=secret.text("username").strip(), password=secret.text("password").strip()
            )
        elif ref.use is SecretUse.REDIS:
            username = secret.text("username").strip() if "username" in secret.data else ""
            redis_credentials = Credentials(username=username, password=secret.text("password").strip())
        else:
            cas[ref.name] = secret.data["ca.crt"]
    return RelayConfig(
        name=name,
        namespace=namespace,
        spec=spec,
        tls=tls,
        users=users,
        credentials=credentials,
        cas=cas,
        redis_credentials=redis_credentials,
    )
