"""Cross-field rules as CEL `x-kubernetes-validations`.

Rules that span fields (unique listener names, TLS needs a certificate, ...) and the custom pydantic
validators that JSON schema cannot express become CEL rules the apiserver runs. The tests evaluate them with
a real CEL implementation (the emulator's, tests/kube/cel_rules.py) against the corpus the models also
judge, so the CRD and the models refuse the same documents; what a `pattern` or a bound can say is said that
way instead (cheaper for the apiserver, whose cost budget the bounds of config/fields.py keep every rule under).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One CEL rule in the CRD and the message the apiserver answers when it is false."""

    cel: str
    message: str


_ONE_COLON = "(self.indexOf(':') >= 0 && self.indexOf(':') == self.lastIndexOf(':'))"
_NAMESERVER_HOST = (
    f"(self.startsWith('[') ? self.substring(1, self.indexOf(']'))"
    f" : ({_ONE_COLON} ? self.substring(0, self.indexOf(':')) : self))"
)
"""The address part of a nameserver whose shape NAMESERVER_PATTERN already checked."""
_NAMESERVER_PORT = (
    f"(self.startsWith('[') ? self.substring(self.indexOf(']') + 1)"
    f" : ({_ONE_COLON} ? self.substring(self.indexOf(':')) : ''))"
)
"""':port' or '' (the pattern made sure the digits are digits)."""

MAX_RELAY_NAME = 52
"""An SmtpRelay's name is its StatefulSet's, and a StatefulSet's pods carry the label
`controller-revision-hash: <name>-<10-character hash>`, which must fit 63 characters."""
NAME_RULES = {
    "SmtpRelay": [
        Rule(
            "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "metadata.name must be a DNS label (RFC 1035): lower-case letters, digits and '-', starting with a"
            " letter, because it names the relay's Services",
        ),
        Rule(
            f"self.metadata.name.size() <= {MAX_RELAY_NAME}",
            f"metadata.name must be at most {MAX_RELAY_NAME} characters: it names the relay's StatefulSet,"
            " whose pods' controller-revision-hash label adds 11",
        ),
    ],
}
"""Rules on `metadata.name` at the root of a CRD's schema, by kind (the only metadata CEL may read)."""

# Rules keyed by the pydantic model (a $defs name or the root model's title) they attach to, or by
# "Model.field" for a rule on each item of that list field.
_DESTINATION_RULES = [
    Rule(
        "[has(self.smarthosts), has(self.mx), has(self.capture)].filter(x, x).size() == 1",
        "exactly one of smarthosts, mx or capture must be set",
    ),
]
RULES: dict[str, list[Rule]] = {
    "SmtpRelaySpec": [
        Rule(
            "self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))",
            "listener names must be unique",
        ),
        Rule(
            "self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",
            "listener ports must be unique",
        ),
        Rule(
            "!self.listeners.exists(l, has(l.tls) && l.tls != 'none') || has(self.tls)",
            "a listener uses TLS, so tls.secretName must name a certificate",
        ),
        Rule(
            "!self.listeners.exists(l, has(l.auth) && l.auth != 'none')"
            " || (has(self.clients) && has(self.clients.users))",
            "a listener uses AUTH, so clients.users must name a Secret",
        ),
    ],
    "Listener": [
        Rule(
            "!(has(self.requireTLS) && self.requireTLS) || (has(self.tls) && self.tls != 'none')",
            "requireTLS needs tls: starttls or implicit",
        ),
    ],
    "Smarthost": [
        Rule(
            "!has(self.credentialsSecret) || !has(self.tls) || self.tls != 'none'"
            " || (has(self.allowInsecureAuth) && self.allowInsecureAuth)",
            "credentialsSecret with tls none would send the password in clear text:"
            " use tls starttls or implicit (or allowInsecureAuth: true, for test networks only)",
        ),
    ],
    "Destination": _DESTINATION_RULES,
    "Route": _DESTINATION_RULES,
    "SpamSpec": [
        Rule(
            "!(has(self.engine) && self.engine in ['rspamd', 'spamassassin'])"
            " || (has(self.address) && self.address != '')",
            "address (host:port) is required for engines rspamd and spamassassin",
        ),
        Rule(
            "(has(self.rejectAbove) ? self.rejectAbove : 15.0) >= (has(self.tagAbove) ? self.tagAbove : 5.0)",
            "rejectAbove must not be below tagAbove",
        ),
    ],
    "VirusSpec": [
        Rule(
            "!(has(self.engine) && self.engine == 'clamd') || (has(self.address) && self.address != '')",
            "address (host:port) is required for engine clamd",
        ),
    ],
    "ClientsSpec.allowedNetworks": [
        Rule(
            "isCIDR(self) || isIP(self)",
            "must be an IP network in CIDR notation such as 10.0.0.0/8",
        ),
    ],
    "SpfSpec.egressIps": [
        Rule(
            "isCIDR(self) || isIP(self)",
            "must be an IP address or network in CIDR notation",
        ),
    ],
    "DnsSpec.nameservers": [
        Rule(
            f"isIP({_NAMESERVER_HOST})"
            f" && ({_NAMESERVER_PORT} == '' || int({_NAMESERVER_PORT}.substring(1)) >= 1"
            f" && int({_NAMESERVER_PORT}.substring(1)) <= 65535)",
            "must be an IP address, optionally with :port ([address]:port for IPv6)",
        ),
    ],
    "AutoscalingSpec": [
        Rule(
            "(has(self.minReplicas) ? self.minReplicas : 1) <= (has(self.maxReplicas) ? self.maxReplicas : 10)",
            "minReplicas must not be above maxReplicas",
        ),
    ],
    "LimitsSpec": [
        Rule(
            "!has(self.backend) || self.backend != 'redis' || has(self.redis)",
            "backend redis needs redis.address",
        ),
    ],
    "RedisSpec": [
        Rule("!has(self.caSecret) || (has(self.tls) && self.tls)", "caSecret needs tls: true"),
        Rule(
            "!has(self.address) || int(self.address.substring(self.address.lastIndexOf(':') + 1)) >= 1"
            " && int(self.address.substring(self.address.lastIndexOf(':') + 1)) <= 65535",
            "address: port must be between 1 and 65535",
        ),
    ],
    "DkimSpec": [
        Rule(
            "!has(self.secretName) || has(self.selector)",
            "secretName needs the selector its public key is published under",
        ),
    ],
    "SendingDomainSpec": [
        Rule(
            "!has(self.returnPath) || self.returnPath.domain.lowerAscii().endsWith('.' + self.domain.lowerAscii())",
            "returnPath.domain must be a subdomain of domain",
        ),
    ],
}
"""Cross-field rules (CEL) and the custom pydantic validators JSON schema cannot express."""

FIELD_HINTS: dict[str, Schema] = {
    "Destination.smarthosts": {"minItems": 1},
    "Route.smarthosts": {"minItems": 1},
}
"""Bounds pydantic enforces in a validator (smarthosts), so its JSON schema does not carry them."""
