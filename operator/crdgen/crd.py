"""CustomResourceDefinitions generated from the pydantic spec models.

The models in `smtp_relay.spec` are the contract; the CRDs are derived from them so `kubectl explain`,
admission and the relay itself agree. Pydantic's JSON schema is not a Kubernetes *structural* schema
($refs, anyOf for Optional, lookahead patterns, additionalProperties), so `structural()` rewrites it.
Rules that span fields cannot be JSON schema; they become CEL `x-kubernetes-validations`, each kept
beside a Python mirror (`Rule.mirror`) so the tests can prove both sides refuse the same documents.

`python -m relay_operator.crd --write` regenerates `crds/` and the chart's copy; a test checks that
the committed files equal the output, so they never drift.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from smtp_relay.config.spec import API_GROUP, API_VERSION, SendingDomainSpec, SmtpRelaySpec

Schema = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
"""Repository root (operator/relay_operator/crd.py -> ../..)."""

OUTPUT_DIRS = (ROOT / "crds", ROOT / "charts" / "relayfleet" / "crds")
"""Where `--write` puts the CRDs: the plain folder for `kubectl apply -f crds/` and the chart's."""

_LOOKAHEAD_LENGTH = re.compile(r"^\^\(\?=\.\{(\d+),(\d+)\}\$\)")
"""Go's RE2 (used by the apiserver) has no lookahead; the domain pattern's length guard becomes min/maxLength."""


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


def _strip_none(value: Any) -> Any:
    """Drop nulls from a default: a structural default must validate, and null is not a value there."""
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value if v is not None]
    return value


def _fix_pattern(out: Schema) -> None:
    pattern = out.get("pattern")
    if not isinstance(pattern, str):
        return
    match = _LOOKAHEAD_LENGTH.match(pattern)
    if match:
        out["pattern"] = "^" + pattern[match.end() :]
        out.setdefault("minLength", int(match.group(1)))
        out.setdefault("maxLength", int(match.group(2)))


def _without_null(branches: list[Schema]) -> list[Schema]:
    flat: list[Schema] = []
    for branch in branches:
        if set(branch) == {"anyOf"}:
            flat.extend(_without_null(branch["anyOf"]))
        elif "anyOf" in branch:
            inner = _without_null(branch["anyOf"])
            rest = {k: v for k, v in branch.items() if k != "anyOf"}
            flat.append({**rest, "anyOf": inner} if len(inner) > 1 else {**inner[0], **rest})
        elif branch.get("type") != "null":
            flat.append(branch)
    return flat


class _Converter:
    """Walks one pydantic JSON schema, inlining $defs and rewriting it into a structural schema."""

    def __init__(self, root: Schema) -> None:
        self.defs: dict[str, Schema] = root.get("$defs", {})
        self.root = root

    def model(self, name: str, node: Schema) -> Schema:
        out: Schema = {"type": "object", "description": node["description"]}
        props = node.get("properties", {})
        if props:
            out["properties"] = {key: self.field(name, key, value) for key, value in props.items()}
        if node.get("required"):
            out["required"] = list(node["required"])
        if node.get("additionalProperties") is True and not props:
            out["x-kubernetes-preserve-unknown-fields"] = True
        rules = RULES.get(name, [])
        if rules:
            out["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
        return out

    def field(self, model: str, key: str, node: Schema) -> Schema:
        out = self.node(node, f"{model}.{key}")
        if "description" not in out:
            raise ValueError(f"{model}.{key} has no description: add a docstring under the field")
        out.update(FIELD_HINTS.get(f"{model}.{key}", {}))
        return out

    def node(self, node: Schema, where: str) -> Schema:
        node = dict(node)
        node.pop("title", None)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.model(name, self.defs[name])
            return self._merge(target, node, where)
        if "anyOf" in node:
            branches = _without_null(node.pop("anyOf"))
            if len(branches) == 1:
                return self.node({**branches[0], **node}, where)
            types = sorted(b.get("type", "") for b in branches)
            if types != ["integer", "string"]:
                raise ValueError(f"{where}: unions other than Optional and int|str cannot be structural: {types}")
            out = self._scalar(node)
            out.pop("type", None)
            out["x-kubernetes-int-or-string"] = True
            for branch in branches:
                out.update({k: v for k, v in branch.items() if k not in ("type", "title")})
            out.setdefault("minimum", 0)  # quantities: the integer form cannot be negative either
            _fix_pattern(out)
            return out
        if node.get("type") == "array":
            out = self._scalar(node)
            out["items"] = self.node(node["items"], where)
            rules = RULES.get(where, [])
            if rules:
                out["items"]["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
            return out
        if node.get("type") == "object":
            out = self._scalar(node)
            if out.pop("additionalProperties", None) is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            return out
        return self._scalar(node)

    def _merge(self, target: Schema, extra: Schema, where: str) -> Schema:
        """A field pointing at a model: the field's own description wins over the model's."""
        out = dict(target)
        for key, value in extra.items():
            if key == "default":
                if value is not None:
                    out["default"] = _strip_none(value)
            elif key == "description":
                out["description"] = value
            else:
                raise ValueError(f"{where}: unexpected {key!r} beside $ref")
        return out

    def _scalar(self, node: Schema) -> Schema:
        out = {k: copy.deepcopy(v) for k, v in node.items() if k not in ("title", "items")}
        if "default" in out:
            if out["default"] is None:
                del out["default"]
            else:
                out["default"] = _strip_none(out["default"])
        _fix_pattern(out)
        return out

    def convert(self) -> Schema:
        return self.model(str(self.root["title"]), self.root)


_FIRST_KEYS = ("type", "description")


def _ordered(node: Schema) -> Schema:
    """type and description first, then the rest: readable YAML for humans and `kubectl explain`."""
    out = {k: node[k] for k in _FIRST_KEYS if k in node}
    out.update({k: v for k, v in node.items() if k not in _FIRST_KEYS})
    if "properties" in out:
        out["properties"] = {k: _ordered(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _ordered(out["items"])
    return out


def structural(model: type[BaseModel]) -> Schema:
    """The model's JSON schema rewritten as a Kubernetes structural OpenAPI v3 schema."""
    return _ordered(_Converter(model.model_json_schema(by_alias=True)).convert())


def _condition_schema() -> Schema:
    def text(description: str) -> Schema:
        return {"type": "string", "description": description}

    return {
        "type": "array",
        "description": "Current state, following the Kubernetes condition convention.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "One aspect of the resource's state.",
            "required": ["type", "status"],
            "properties": {
                "type": text("Condition type, e.g. Ready, Progressing, Degraded."),
                "status": {**text("True, False or Unknown."), "enum": ["True", "False", "Unknown"]},
                "reason": text("Machine-readable CamelCase reason of the last transition."),
                "message": text("Human-readable explanation, naming the field and the fix when degraded."),
                "lastTransitionTime": {
                    **text("When status last changed."),
                    "format": "date-time",
                },
                "observedGeneration": {
                    "type": "integer",
                    "description": "metadata.generation this condition was computed for.",
                },
            },
        },
    }


def _integer(description: str) -> Schema:
    return {"type": "integer", "description": description}


def _string(description: str) -> Schema:
    return {"type": "string", "description": description}


SMTPRELAY_STATUS: Schema = {
    "type": "object",
    "description": "Observed state of the relay fleet, written by the operator.",
    "properties": {
        "replicas": _integer("Relay pods that exist (the scale subresource's status replicas)."),
        "readyReplicas": _integer("Relay pods that pass their readiness probe."),
        "selector": _string("Label selector of the relay pods, for the scale subresource and HPA."),
        "observedGeneration": _integer("metadata.generation last reconciled."),
        "conditions": _condition_schema(),
        "phase": _string("Summary for humans: Ready, Progressing or Degraded."),
        "endpoint": _string("In-cluster address of the relay Service (first listener), host:port."),
        "ports": _string("Listener ports, e.g. 2525,587/starttls."),
        "queueDepth": _integer("Messages waiting in the spools of all pods, when the relays report it."),
        "relay": {
            "type": "object",
            "description": "Further figures reported by the relays (metrics), free form.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
    },
}

SENDINGDOMAIN_STATUS: Schema = {
    "type": "object",
    "description": "Observed state of the domain's DNS records and keys, written by the operator.",
    "properties": {
        "observedGeneration": _integer("metadata.generation last reconciled."),
        "verifiedForSending": {"type": "boolean", "description": "All required records are in place."},
        "conditions": _condition_schema(),
        "records": {
            "type": "array",
            "description": "Each DNS record the domain needs: expected and observed value, status.",
            "items": {
                "type": "object",
                "description": "One DNS record check.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        "dkim": {
            "type": "object",
            "description": "DKIM keys: active, pending and revoked selectors, rotation state.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
    },
}


def _column(name: str, path: str, kind: str, description: str, priority: int = 0) -> Schema:
    column: Schema = {"name": name, "type": kind, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def _condition_column(name: str, condition: str) -> Schema:
    path = f'.status.conditions[?(@.type=="{condition}")].status'
    return _column(name, path, "string", f"Status of the {condition} condition.")


def _crd(
    kind: str, plural: str, short: str, spec: Schema, status: Schema, columns: list[Schema], scale: bool
) -> Schema:
    root: Schema = {
        "type": "object",
        "description": spec["description"],
        "properties": {
            "apiVersion": _string("API version of this object."),
            "kind": _string("Kind of this object."),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if "default" not in spec:
        root["required"] = ["spec"]
    subresources: Schema = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "relayfleet"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["relayfleet"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def smtprelay_crd() -> Schema:
    """The SmtpRelay CRD, with the scale subresource for `kubectl scale` and HPAs."""
    spec = structural(SmtpRelaySpec)
    spec["default"] = {}  # so an SmtpRelay with `spec: {}` still gets every nested default
    columns = [
        _column("Replicas", ".spec.replicas", "integer", "Desired relay pods."),
        _column("Ready", ".status.readyReplicas", "integer", "Relay pods ready to take mail."),
        _column("Queue", ".status.queueDepth", "integer", "Messages waiting in the spools."),
        _column("Age", ".metadata.creationTimestamp", "date", "Time since creation."),
        _column("Ports", ".status.ports", "string", "Listener ports and TLS modes.", priority=1),
        _column("Status", ".status.phase", "string", "Ready, Progressing or Degraded.", priority=1),
    ]
    return _crd("SmtpRelay", "smtprelays", "smr", spec, SMTPRELAY_STATUS, columns, scale=True)


def sendingdomain_crd() -> Schema:
    """The SendingDomain CRD; its status is written by the domain controller."""
    spec = structural(SendingDomainSpec)
    columns = [
        _column("Verified", ".status.verifiedForSending", "boolean", "Ready to send: every record checks out."),
        _condition_column("DKIM", "DkimVerified"),
        _condition_column("SPF", "SpfAligned"),
        _condition_column("DMARC", "DmarcPresent"),
        _column("Age", ".metadata.creationTimestamp", "date", "Time since creation."),
    ]
    return _crd("SendingDomain", "sendingdomains", "sd", spec, SENDINGDOMAIN_STATUS, columns, scale=False)


def all_crds() -> dict[str, Schema]:
    """File name -> CRD document."""
    return {
        f"smtprelays.{API_GROUP}.yaml": smtprelay_crd(),
        f"sendingdomains.{API_GROUP}.yaml": sendingdomain_crd(),
    }


HEADER = "# Generated by `python -m relay_operator.crd --write` from smtp_relay/spec.py. Do not edit.\n"


def render_yaml(crd: Schema) -> str:
    """Stable YAML text of one CRD (key order kept, so diffs stay readable)."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Print the CRDs, or write them to crds/ and the chart (`--write`), or check them (`--check`)."""
    parser = argparse.ArgumentParser(prog="python -m relay_operator.crd", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="write crds/ and charts/relayfleet/crds/")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files are stale")
    args = parser.parse_args(argv)
    stale = []
    for name, crd in all_crds().items():
        text = render_yaml(crd)
        if not args.write and not args.check:
            sys.stdout.write("---\n" + text)
            continue
        for folder in OUTPUT_DIRS:
            path = folder / name
            if args.write:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            elif not path.exists() or path.read_text() != text:
                stale.append(str(path))
    if stale:
        sys.stderr.write("stale, run `python -m relay_operator.crd --write`: " + ", ".join(stale) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
