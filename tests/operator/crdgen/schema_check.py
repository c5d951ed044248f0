"""Validate a document against a generated CRD the way the apiserver would, as far as Python can.

OpenAPI v3 value validation runs through `jsonschema` (after translating the Kubernetes extensions),
unknown fields are refused as by `kubectl`'s default strict field validation, and each CEL rule is
evaluated through its Python mirror from `crdgen.rules.RULE_MIRRORS` (a rule without a mirror
is an error, so a new CEL rule cannot go untested).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from crdgen.rules import RULE_MIRRORS

Schema = dict[str, Any]


def to_jsonschema(node: Schema) -> Schema:
    """Translate the Kubernetes extensions of a structural schema into plain JSON schema."""
    out = copy.deepcopy(node)
    if out.pop("x-kubernetes-int-or-string", False):
        out["type"] = ["integer", "string"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    out.pop("x-kubernetes-validations", None)
    for key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
        out.pop(key, None)
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {k: to_jsonschema(v) for k, v in out["properties"].items()}
        if not preserve and out["properties"] and "metadata" not in out["properties"]:
            out["additionalProperties"] = False
    if "items" in out:
        out["items"] = to_jsonschema(out["items"])
    return out


def cel_errors(schema: Schema, value: Any, path: str = "") -> list[str]:
    """Evaluate the mirrors of every CEL rule that applies to `value` and its children."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        mirror = RULE_MIRRORS[rule["rule"]]
        if not mirror(value):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is not None:
                errors.extend(cel_errors(sub, child, f"{path}.{key}" if path else key))
    elif isinstance(value, list) and "items" in schema:
        for i, child in enumerate(value):
            errors.extend(cel_errors(schema["items"], child, f"{path}[{i}]"))
    return errors


def crd_errors(crd: Schema, document: Any) -> list[str]:
    """All the reasons the apiserver would refuse `document` under `crd` (empty: accepted)."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(to_jsonschema(schema))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    if errors:
        return errors  # the apiserver runs CEL only on schema-valid objects
    return cel_errors(schema, document)
