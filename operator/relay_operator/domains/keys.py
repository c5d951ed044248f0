"""DKIM key Secrets of a SendingDomain: their names, labels, owner and content, and the records they need.

Pure (key generation is CPU work, not I/O), so the manifests are unit-tested with plain data. One Secret per
selector, owned by the SendingDomain (deleted with it by the garbage collector), holding `private.pem` (RSA)
and, when spec.dkim.ed25519 asks, `ed25519.pem` whose record lives at `<selector>-ed`. The relay mounts the
active one; the private keys appear nowhere else (not in status, events or logs).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smtp_relay.config.domains import ED25519_KEY_FILE, KEY_FILE
from smtp_relay.config.spec import API_GROUP, API_VERSION
from smtp_relay.dnscheck.dkim_keys import generate_ed25519, generate_rsa, load_private_key, public_txt

Manifest = dict[str, Any]

MANAGED_BY = "relayfleet-operator"
APP_NAME = "relayfleet-dkim"
DOMAIN_LABEL = "relayfleet.io/sending-domain"
SELECTOR_LABEL = "relayfleet.io/dkim-selector"


@dataclass(frozen=True)
class Domain:
    """The SendingDomain a key belongs to: what its Secrets and status need to know about it."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Domain:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta["name"]),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            annotations=dict(meta.get("annotations") or {}),
        )


def ed25519_selector(selector: str) -> str:
    """Where the Ed25519 key of a generated Secret is published (RFC 8463 keys need their own selector)."""
    return f"{selector}-ed"


def key_secret_name(domain: Domain, selector: str) -> str:
    return f"{domain.name}-dkim-{selector}"


def owner_reference(domain: Domain) -> dict[str, Any]:
    """The SendingDomain controls its key Secrets: they go with it, and nobody else's Secret is taken for one."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "SendingDomain",
        "name": domain.name,
        "uid": domain.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def key_labels(domain: Domain, selector: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": domain.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "relayfleet",
        DOMAIN_LABEL: domain.name,
        SELECTOR_LABEL: selector,
    }


@dataclass(frozen=True)
class KeyPair:
    """The private keys of one selector, PEM; never logged (repr hides them)."""

    rsa_pem: bytes = field(repr=False)
    ed25519_pem: bytes | None = field(default=None, repr=False)


def generate(key_bits: int, ed25519: bool) -> KeyPair:
    """New keys for one selector: RSA of `key_bits`, and Ed25519 beside it when asked."""
    return KeyPair(generate_rsa(key_bits), generate_ed25519() if ed25519 else None)


def build_key_secret(domain: Domain, selector: str, keys: KeyPair) -> Manifest:
    """The Secret `<sd-name>-dkim-<selector>` holding `keys`; created once, never patched."""
    data = {KEY_FILE: base64.b64encode(keys.rsa_pem).decode()}
    if keys.ed25519_pem is not None:
        data[ED25519_KEY_FILE] = base64.b64encode(keys.ed25519_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": key_secret_name(domain, selector),
            "namespace": domain.namespace,
            "labels": key_labels(domain, selector),
            "ownerReferences": [owner_reference(domain)],
        },
        "data": data,
    }


def secret_files(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's content as read from the API (`data` base64; `stringData` as a hand-made one may still show)."""
    files: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            files[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            continue  # not readable: reported as a missing key by the caller
    for key, value in (secret.get("stringData") or {}).items():
        files[str(key)] = str(value).encode()
    return files


@dataclass(frozen=True)
class PublicKeys:
    """What a key Secret publishes: selector -> public-key TXT value, and the RSA key size."""

    records: dict[str, str]
    key_bits: int | None
    ed25519_selector: str | None = None


def public_keys(secret: Mapping[str, Any], selector: str) -> PublicKeys:
    """The records of the keys in `secret` for `selector`; ValueError saying what is wrong (never the key)."""
    files = secret_files(secret)
    if KEY_FILE not in files:
        raise ValueError(f"it has no {KEY_FILE}")
    try:
        key = load_private_key(files[KEY_FILE])
    except ValueError as exc:
        raise ValueError(f"{KEY_FILE}: {exc}") from None
    records = {selector: public_txt(key)}
    bits = getattr(key, "key_size", None)
    ed_selector = None
    if ED25519_KEY_FILE in files:
        try:
            ed_key = load_private_key(files[ED25519_KEY_FILE])
        except ValueError as exc:
            raise ValueError(f"{ED25519_KEY_FILE}: {exc}") from None
        ed_selector = ed25519_selector(selector)
        records[ed_selector] = public_txt(ed_key)
    return PublicKeys(records, int(bits) if bits is not None else None, ed_selector)
