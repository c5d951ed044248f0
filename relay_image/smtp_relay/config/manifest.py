"""Loading an `SmtpRelay` manifest and the Secrets it references, locally or in a pod.

Locally, `smtp-relay run -f FILE` reads a multi-document YAML holding an SmtpRelay and any Secret
documents. In a pod, the operator mounts the rendered spec as a file and each Secret as a folder
(`<secrets-dir>/<secret-name>/<key>`). Both paths end in the same `RelayConfig`, so the relay has
one code path whatever the source. Errors name the field path and the reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.spec import API_GROUP, SmtpRelaySpec

DOMAINS_ANNOTATION = "relayfleet.io/sending-domains"
"""On the SmtpRelay document the operator renders: `included` says its SendingDomains are in the same file
(possibly none), so the relay knows the verified set instead of waiting for it."""


class ManifestError(Exception):
    """A manifest that cannot run; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """Turn pydantic errors into `spec.listeners[1].port: must be between 1 and 65535` lines."""
    lines = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif "[" in str(part) or part in ("function-after", "tagged-union"):
                continue  # pydantic's internal locator for Annotated validators
            else:
                path += f".{part}"
        message = error["msg"]
        for noise in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(noise)
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{path}: {message}")
    return lines


def parse_spec(raw: Mapping[str, Any] | None, prefix: str = "spec") -> SmtpRelaySpec:
    """Validate a raw `spec` mapping; raise ManifestError naming each bad field."""
    try:
        return SmtpRelaySpec.model_validate(raw or {})
    except ValidationError as exc:
        raise ManifestError(format_validation_error(exc, prefix)) from None


@dataclass(frozen=True)
class SecretData:
    """The decoded data of one Secret: key -> bytes."""

    name: str
    data: Mapping[str, bytes]

    def text(self, key: str) -> str:
        return self.data[key].decode()


@dataclass(frozen=True)
class DomainDocument:
    """A SendingDomain found beside the SmtpRelay: its spec, and its status when the operator rendered it."""

    name: str
    spec: SendingDomainSpec
    status: Mapping[str, Any] | None = None
    """None for a hand-written document (local use): its domain counts as verified, its key is spec.dkim's."""


@dataclass
class RelayManifest:
    """An SmtpRelay with the Secrets and SendingDomains found beside it."""

    name: str
    namespace: str
    spec: SmtpRelaySpec
    secrets: dict[str, SecretData] = field(default_factory=dict)
    domains: list[DomainDocument] = field(default_factory=list)
    domains_included: bool = False
    """The file holds the relay's SendingDomains (any were found, or the operator's annotation says so)."""


def parse_domain(doc: Mapping[str, Any]) -> DomainDocument:
    """A SendingDomain document; ManifestError naming `SendingDomain <name>: spec.<field>` when it is invalid."""
    name = str((doc.get("metadata") or {}).get("name", ""))
    try:
        spec = SendingDomainSpec.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        raise ManifestError([f"SendingDomain {name}: {line}" for line in format_validation_error(exc)]) from None
    status = doc.get("status")
    return DomainDocument(name=name, spec=spec, status=status if isinstance(status, dict) else None)


def decode_secret(doc: Mapping[str, Any]) -> SecretData:
    """Decode a Secret document (`data` base64, `stringData` plain, as Kubernetes does)."""
    name = str((doc.get("metadata") or {}).get("name", ""))
    decoded: dict[str, bytes] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            decoded[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ManifestError([f"Secret {name}: data.{key}: not valid base64"]) from None
    for key, value in (doc.get("stringData") or {}).items():
        decoded[str(key)] = str(value).encode()
    return SecretData(name=name, data=decoded)


def load_documents(docs: Iterable[Any], source: str = "manifest") -> RelayManifest:
    """Pick the SmtpRelay and the Secrets out of parsed YAML documents."""
    relays = []
    secrets: dict[str, SecretData] = {}
    domains: list[DomainDocument] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError([f"{source}: every document must be a mapping"])
        kind = doc.get("kind")
        if kind == "SmtpRelay":
            api_version = str(doc.get("apiVersion", ""))
            if api_version.split("/")[0] != API_GROUP:
                raise ManifestError([f"{source}: apiVersion must be {API_GROUP}/v1alpha1, not {api_version!r}"])
            relays.append(doc)
        elif kind == "Secret":
            secret = decode_secret(doc)
            secrets[secret.name] = secret
        elif kind == "SendingDomain":
            domains.append(parse_domain(doc))
    if len(relays) != 1:
        raise ManifestError([f"{source}: expected exactly one SmtpRelay document, found {len(relays)}"])
    meta = relays[0].get("metadata") or {}
    spec = parse_spec(relays[0].get("spec"))
    included = bool(domains) or (meta.get("annotations") or {}).get(DOMAINS_ANNOTATION) == "included"
    return RelayManifest(
        name=str(meta.get("name", "relay")),
        namespace=str(meta.get("namespace", "default")),
        spec=spec,
        secrets=secrets,
        domains=domains,
        domains_included=included,
    )


def read_documents(path: Path) -> list[Any]:
    """The documents of a multi-document YAML file; ManifestError naming the file when it cannot be read."""
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except OSError as exc:
        raise ManifestError([f"{path}: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([f"{path}: not valid YAML: {exc}"]) from None


def load_file(path: Path) -> RelayManifest:
    """Read a multi-document YAML file holding one SmtpRelay and its Secrets."""
    return load_documents(read_documents(path), str(path))


def load_mounted_secrets(folder: Path) -> dict[str, SecretData]:
    """Read Secrets mounted by the operator as `<folder>/<secret>/<key>` files."""
    secrets: dict[str, SecretData] = {}
    if not folder.is_dir():
        return secrets
    for secret_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        data = {f.name: f.read_bytes() for f in secret_dir.iterdir() if f.is_file() and not f.name.startswith(".")}
        secrets[secret_dir.name] = SecretData(name=secret_dir.name, data=data)
    return secrets
