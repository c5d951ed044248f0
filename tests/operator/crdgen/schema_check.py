"""Validate a document against a generated CRD the way the apiserver would, as far as Python can.

OpenAPI v3 value validation runs through `jsonschema` (after translating the Kubernetes extensions),
unknown fields are refused as by `kubectl`'s default strict field validation, and the CEL rules are
evaluated by a real CEL implementation, the emulator's (tests/kube/cel_rules.py), with the Kubernetes
libraries of the version the chart declares.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from tests.kube import cel_rules, structural

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


def cel_errors(schema: Schema, value: Any) -> list[str]:
    """Every CEL rule that applies to `value` and its children, evaluated as the apiserver would."""
    return [str(error) for error in cel_rules.evaluate(schema, value)]


def crd_errors(crd: Schema, document: Any) -> list[str]:
    """All the reasons the apiserver would refuse `document` under `crd` (empty: accepted)."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(to_jsonschema(schema))
    errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    if errors:
        return errors  # the apiserver runs CEL only on schema-valid objects
    defaulted = copy.deepcopy(document)
    structural.apply_defaults(defaulted, schema)  # as stored: rules see the defaults
    return cel_errors(schema, defaulted)
