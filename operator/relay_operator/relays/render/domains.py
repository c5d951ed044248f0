"""What an SmtpRelay's pods learn of their SendingDomains: documents for the relay's config, keys in one Secret.

Pure. Every SendingDomain of the namespace whose `spec.relays` names the relay becomes a SendingDomain document
beside the SmtpRelay in `relay.yaml` (its spec, and of its status what the relay uses: verified or not, what is
missing, the active selectors), and its active private keys are copied into one Secret per relay,
`<relay>-dkim-keys`, which the pods always mount. A new domain, a rotation or a deletion then changes only
mounted files, which the relay reloads without a restart; mounting each domain's own Secret would change the
pod template, and roll every pod, whenever a domain came, went or rotated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay_operator.relays.render.common import Manifest, Owner, metadata
from smtp_relay.config.spec import API_GROUP, API_VERSION

KEY_FILE = "private.pem"
ED25519_KEY_FILE = "ed25519.pem"


def dkim_secret_name(owner: Owner) -> str:
    return f"{owner.name}-dkim-keys"


@dataclass(frozen=True)
class RelayDomain:
    """One SendingDomain as the relay gets it."""

    name: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    keys: Mapping[str, str] = field(default_factory=dict)
    """File name in `<relay>-dkim-keys` -> base64 PEM, as the key Secret holds it."""


def names_relay(domain: Mapping[str, Any], relay: str) -> bool:
    return relay in ((domain.get("spec") or {}).get("relays") or [])


def key_secret_names(domains: Sequence[Mapping[str, Any]], relay: str) -> list[str]:
    """The Secrets holding the active keys of the relay's domains (the operator reads them, the pods do not)."""
    found = []
    for domain in domains:
        secret = ((domain.get("status") or {}).get("dkim") or {}).get("secretName")
        if names_relay(domain, relay) and secret:
            found.append(str(secret))
    return list(dict.fromkeys(found))


def relay_domains(
    owner: Owner, domains: Sequence[Mapping[str, Any]], key_secrets: Mapping[str, Mapping[str, Any] | None]
) -> list[RelayDomain]:
    """The relay's SendingDomains, sorted by name, with the status subset and the active keys it needs.

    A domain the controller has not looked at yet (no status) is rendered unverified and without keys."""
    rendered = []
    for domain in sorted(domains, key=lambda d: str(d["metadata"]["name"])):
        if not names_relay(domain, owner.name):
            continue
        name = str(domain["metadata"]["name"])
        status = domain.get("status") or {}
        dkim = status.get("dkim") or {}
        records = [
            {"purpose": r.get("purpose"), "status": r.get("status"), "required": r.get("required", True)}
            for r in status.get("records") or []
        ]
        relay_status: dict[str, Any] = {
            "verifiedForSending": bool(status.get("verifiedForSending")),
            "records": records,
        }
        keys: dict[str, str] = {}
        secret = key_secrets.get(str(dkim.get("secretName") or "")) or {}
        data = secret.get("data") or {}
        if dkim.get("activeSelector") and KEY_FILE in data:
            keys[f"{name}.{KEY_FILE}"] = str(data[KEY_FILE])
            relay_dkim = {"activeSelector": dkim["activeSelector"], "secretName": dkim_secret_name(owner),
                          "keyFile": f"{name}.{KEY_FILE}"}  # fmt: skip
            if ED25519_KEY_FILE in data and dkim.get("ed25519Selector"):
                keys[f"{name}.{ED25519_KEY_FILE}"] = str(data[ED25519_KEY_FILE])
                relay_dkim |= {
                    "ed25519Selector": dkim["ed25519Selector"],
                    "ed25519KeyFile": f"{name}.{ED25519_KEY_FILE}",
                }
            relay_status["dkim"] = relay_dkim
        rendered.append(RelayDomain(name, dict(domain.get("spec") or {}), relay_status, keys))
    return rendered


def domain_documents(domains: Sequence[RelayDomain]) -> list[dict[str, Any]]:
    """The SendingDomain documents of `relay.yaml`."""
    return [
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "SendingDomain",
            "metadata": {"name": d.name},
            "spec": dict(d.spec),
            "status": dict(d.status),
        }
        for d in domains
    ]


def build_dkim_secret(owner: Owner, domains: Sequence[RelayDomain]) -> Manifest:
    """Secret `<relay>-dkim-keys`: the active private keys of every domain the relay signs for (maybe none)."""
    data = {file: pem for d in domains for file, pem in d.keys.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(owner, dkim_secret_name(owner)),
        "data": data,
    }
