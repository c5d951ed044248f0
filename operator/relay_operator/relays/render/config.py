"""The relay's config: a ConfigMap holding an SmtpRelay document with the spec, and its SendingDomains.

The relay loads it with the very models the operator validated it with, and reloads it when the
kubelet refreshes the mounted file (policy, routes, users), so most spec changes need no restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from relay_operator.relays.render.common import Manifest, Owner, config_map_name, metadata
from relay_operator.relays.render.domains import RelayDomain, domain_documents
from smtp_relay.config.manifest import DOMAINS_ANNOTATION
from smtp_relay.config.spec import API_GROUP, API_VERSION, SmtpRelaySpec

CONFIG_KEY = "relay.yaml"
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's emitter when PyYAML has it: ~5x faster than the pure-Python one, the same YAML (it may fold
long scalars at other places than the Python emitter, so an upgrade can rewrite such ConfigMaps once)."""


def relay_document(owner: Owner, spec: SmtpRelaySpec) -> dict[str, Any]:
    """The SmtpRelay document the relay reads (`smtp-relay run -f`), with every default spelled out; its
    annotation says the SendingDomains follow in the same file (so an empty set is known to be empty)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "SmtpRelay",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "annotations": {DOMAINS_ANNOTATION: "included"},
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def build_configmap(owner: Owner, spec: SmtpRelaySpec, domains: Sequence[RelayDomain] = ()) -> Manifest:
    """ConfigMap `<name>-config` with `relay.yaml`: the SmtpRelay, then its SendingDomains."""
    documents = [relay_document(owner, spec), *domain_documents(domains)]
    text = yaml.dump_all(documents, Dumper=_DUMPER, sort_keys=False, width=120)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner)),
        "data": {CONFIG_KEY: text},
    }
