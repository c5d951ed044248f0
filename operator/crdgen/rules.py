"""Cross-field rules as CEL `x-kubernetes-validations`, each with a Python mirror.

Rules that span fields (unique listener names, TLS needs a certificate, ...) and the custom pydantic
validators cannot be JSON schema. Each becomes a CEL rule the apiserver runs, kept beside a Python
mirror (`Rule.mirror`) so the tests can prove the CRD and the models refuse the same documents.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One CEL rule in the CRD, with a Python mirror used by the tests (the apiserver runs the CEL)."""

    cel: str
    message: str
    mirror: Callable[[Any], bool]
    """Python equivalent of `cel` on the same node (after the apiserver has applied defaults)."""


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _nameserver_ok(value: str) -> bool:
    host = value.split(":", 1)[0] if value.count(":") == 1 else value
    return _is_ip(host)


def _destinations(node: Mapping[str, Any]) -> int:
    return sum(1 for key in ("smarthosts", "mx", "capture") if key in node)


def _listeners(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(node.get("listeners", []))


# Rules keyed by the pydantic model (a $defs name or the root model's title) they attach to, or by
# "Model.field" for a rule on each item of that list field.
_DESTINATION_RULES = [
    Rule(
        "[has(self.smarthosts), has(self.mx), has(self.capture)].filter(x, x).size() == 1",
        "exactly one of smarthosts, mx or capture must be set",
        lambda node: _destinations(node) == 1,
    ),
]
RULES: dict[str, list[Rule]] = {
    "SmtpRelaySpec": [
        Rule(
            "self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))",
            "listener names must be unique",
            lambda node: len({x["name"] for x in _listeners(node)}) == len(_listeners(node)),
        ),
        Rule(
            "self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",
            "listener ports must be unique",
            lambda node: len({x["port"] for x in _listeners(node)}) == len(_listeners(node)),
        ),
        Rule(
            "!self.listeners.exists(l, has(l.tls) && l.tls != 'none') || has(self.tls)",
            "a listener uses TLS, so tls.secretName must name a certificate",
            lambda node: all(x.get("tls", "none") == "none" for x in _listeners(node)) or "tls" in node,
        ),
        Rule(
            "!self.listeners.exists(l, has(l.auth) && l.auth != 'none')"
            " || (has(self.clients) && has(self.clients.users))",
            "a listener uses AUTH, so clients.users must name a Secret",
            lambda node: (
                all(x.get("auth", "none") == "none" for x in _listeners(node)) or "users" in node.get("clients", {})
            ),
        ),
    ],
    "Listener": [
        Rule(
            "!(has(self.requireTLS) && self.requireTLS) || (has(self.tls) && self.tls != 'none')",
            "requireTLS needs tls: starttls or implicit",
            lambda node: not node.get("requireTLS", False) or node.get("tls", "none") != "none",
        ),
    ],
    "Smarthost": [
        Rule(
            "!has(self.credentialsSecret) || !has(self.tls) || self.tls != 'none'"
            " || (has(self.allowInsecureAuth) && self.allowInsecureAuth)",
            "credentialsSecret with tls none would send the password in clear text:"
            " use tls starttls or implicit (or allowInsecureAuth: true, for test networks only)",
            lambda node: (
                "credentialsSecret" not in node
                or node.get("tls", "starttls") != "none"
                or bool(node.get("allowInsecureAuth", False))
            ),
        ),
    ],
    "Destination": _DESTINATION_RULES,
    "Route": _DESTINATION_RULES,
    "SpamSpec": [
        Rule(
            "!(has(self.engine) && self.engine in ['rspamd', 'spamassassin'])"
            " || (has(self.address) && self.address != '')",
            "address (host:port) is required for engines rspamd and spamassassin",
            lambda node: node.get("engine", "builtin") not in ("rspamd", "spamassassin") or bool(node.get("address")),
        ),
        Rule(
            "(has(self.rejectAbove) ? self.rejectAbove : 15.0) >= (has(self.tagAbove) ? self.tagAbove : 5.0)",
            "rejectAbove must not be below tagAbove",
            lambda node: float(node.get("rejectAbove", 15.0)) >= float(node.get("tagAbove", 5.0)),
        ),
    ],
    "VirusSpec": [
        Rule(
            "!(has(self.engine) && self.engine == 'clamd') || (has(self.address) && self.address != '')",
            "address (host:port) is required for engine clamd",
            lambda node: node.get("engine", "off") != "clamd" or bool(node.get("address")),
        ),
    ],
    "ClientsSpec.allowedNetworks": [
        Rule(
            "isCIDR(self) || isIP(self)",
            "must be an IP network in CIDR notation such as 10.0.0.0/8",
            lambda node: isinstance(node, str) and _is_network(node),
        ),
    ],
    "SpfSpec.egressIps": [
        Rule(
            "isCIDR(self) || isIP(self)",
            "must be an IP address or network in CIDR notation",
            lambda node: isinstance(node, str) and _is_network(node),
        ),
    ],
    "DnsSpec.nameservers": [
        Rule(
            "isIP(self.indexOf(':') >= 0 && self.indexOf(':') == self.lastIndexOf(':')"
            " ? self.substring(0, self.indexOf(':')) : self)",
            "must be an IP address, optionally with :port",
            lambda node: isinstance(node, str) and _nameserver_ok(node),
        ),
    ],
}
"""Cross-field rules (CEL) and the custom pydantic validators JSON schema cannot express."""

RULE_MIRRORS: dict[str, Callable[[Any], bool]] = {rule.cel: rule.mirror for rules in RULES.values() for rule in rules}
"""CEL text -> Python mirror, for the tests' tiny evaluator."""

FIELD_HINTS: dict[str, Schema] = {
    "Destination.smarthosts": {"minItems": 1},
    "Route.smarthosts": {"minItems": 1},
}
"""Bounds pydantic enforces in a validator (smarthosts), so its JSON schema does not carry them."""
