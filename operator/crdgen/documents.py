"""The CRD documents: names, versions, subresources, printer columns and the status schemas.

The spec schemas come from the models (`crdgen.structural`); the status is written by the operator
alone, so its schema is spelled out here, next to the printer columns that read it.
"""

from __future__ import annotations

from typing import Any

import yaml

from crdgen.rules import NAME_RULES
from crdgen.structural import structural
from smtp_relay.config.domain_spec import SendingDomainSpec
from smtp_relay.config.spec import API_GROUP, API_VERSION, SmtpRelaySpec

Schema = dict[str, Any]


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
        "configDigest": _string("Digest of the relay config last rendered into the ConfigMap (ConfigApplied)."),
        "drain": {
            "type": "object",
            "description": "A scale-down waiting for the leaving pods to empty their spools (absent when none).",
            "properties": {
                "targetReplicas": _integer("The replicas asked for; the StatefulSet keeps more until they drained."),
                "since": {**_string("When this drain began."), "format": "date-time"},
                "waitingFor": {
                    "type": "array",
                    "description": "Each leaving pod that still holds mail or did not answer.",
                    "items": {"type": "string"},
                },
            },
        },
        "queue": {
            "type": "object",
            "description": "The relay pods' queue figures, read from each pod's admin API on every resync.",
            "properties": {
                "depth": _integer("Messages queued (active + deferred) on the pods that answered."),
                "active": _integer("Messages due now or being delivered."),
                "deferred": _integer("Messages waiting for their next attempt."),
                "quarantined": _integer("Messages held in quarantine."),
                "oldestAgeSeconds": _integer("Age of the oldest queued message, in seconds."),
                "podsReporting": _integer("Pods that answered."),
                "podsUnreachable": _integer("Pods that did not answer (named in unreachable)."),
                "unreachable": {
                    "type": "array",
                    "description": "Each pod that did not answer, with the reason.",
                    "items": {"type": "string"},
                },
                "configDigests": {
                    "type": "object",
                    "description": "Config digest -> the pods that run it (compare with status.configDigest).",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
                "ratesPerMinute": {
                    "type": "object",
                    "description": "Per minute since the previous sample, summed over the pods that answered twice.",
                    "properties": {
                        k: {"type": "number", "description": d}
                        for k, d in (
                            ("received", "Messages accepted."),
                            ("delivered", "Recipients delivered."),
                            ("deliveryFailures", "Recipients that failed temporarily (will be retried)."),
                            ("bounced", "Recipients given up on (a DSN went to the sender)."),
                            ("rejected", "Commands or messages refused."),
                        )
                    },
                },
            },
        },
        "relay": {
            "type": "object",
            "description": "Further figures reported by the relays (metrics), free form.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
    },
}


def _time(description: str) -> Schema:
    return {"type": "string", "format": "date-time", "description": description}


def _enum(description: str, values: list[str]) -> Schema:
    return {"type": "string", "description": description, "enum": values}


_RECORD: Schema = {
    "type": "object",
    "description": "One DNS record check.",
    "required": ["purpose", "type", "name", "status"],
    "properties": {
        "purpose": _enum("What the record is for.", ["dkim", "spf", "dmarc", "returnPath"]),
        "type": _enum("The DNS record type.", ["TXT", "MX"]),
        "name": _string("The owner name of the record, without the trailing dot."),
        "expected": _string("The value to publish (empty for a key not readable by the operator)."),
        "observed": _string("What DNS holds there (several records joined by ' | ')."),
        "status": _enum(
            "The verdict on the record.", ["Success", "Pending", "Failed", "TemporaryFailure", "NotStarted"]
        ),
        "errorType": _enum(
            "Why it is not Success.", ["HOST_NOT_FOUND", "TYPE_NOT_FOUND", "INVALID_VALUE", "DNS_SERVER_ERROR"]
        ),
        "message": _string("What is wrong and what to publish."),
        "required": {"type": "boolean", "description": "The domain is verified only with this record in place."},
        "lastChecked": _time("When the record was last looked up."),
        "lastSuccess": _time("Since when the record has been in place (its last success when it is not)."),
    },
}

_DKIM: Schema = {
    "type": "object",
    "description": "DKIM keys: active, pending and revoked selectors, rotation state.",
    "properties": {
        "activeSelector": _string("The selector the relays sign with."),
        "pendingSelector": _string("A new key's selector, waiting for its record in DNS before it signs."),
        "revokedSelector": _string("The previous key's selector: no longer signs, its record stays published."),
        "keyBits": _integer("RSA key size of the active (or first pending) key."),
        "secretName": _string("The Secret of the active key (private.pem, ed25519.pem), mounted by the relays."),
        "ed25519Selector": _string("The selector of the active Ed25519 key (RFC 8463), signed alongside RSA."),
        "activatedAt": _time("When the active key started signing."),
        "revokedAt": _time("When the revoked key stopped signing."),
        "safeToRemoveRevoked": {
            "type": "boolean",
            "description": "No queued message can still need the revoked key: its record may be removed.",
        },
        "rotateRequest": _string("The relayfleet.io/rotate-dkim annotation value the last rotation answered."),
    },
}

SENDINGDOMAIN_STATUS: Schema = {
    "type": "object",
    "description": "Observed state of the domain's DNS records and keys, written by the operator.",
    "properties": {
        "observedGeneration": _integer("metadata.generation last reconciled."),
        "verifiedForSending": {"type": "boolean", "description": "All required records are in place."},
        "lastVerified": _time("The last check that found every required record in place."),
        "lastChecked": _time("When the records were last checked."),
        "nextCheck": _time("When they are checked next (later while DNS does not answer)."),
        "conditions": _condition_schema(),
        "records": {
            "type": "array",
            "description": "Each DNS record the domain needs: expected and observed value, status.",
            "items": _RECORD,
        },
        "dkim": _DKIM,
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
    if kind in NAME_RULES:
        root["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in NAME_RULES[kind]]
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


HEADER = "# Generated by `make crds` (python -m crdgen) from smtp_relay/config/spec.py. Do not edit.\n"


def render_yaml(crd: Schema) -> str:
    """Stable YAML text of one CRD (key order kept, so diffs stay readable)."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)
