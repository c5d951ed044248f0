"""Built-in kinds against the Kubernetes OpenAPI schema of the emulated version (``kubernetes-validate``).

What the apiserver does with a typed object on write, in the order it happens:

* decoding (``json`` into the Go struct): a value of the wrong JSON type, or a malformed Quantity, fails the
  whole request: 400 ``<Kind> in version "v1" cannot be handled as a <Kind>: json: cannot unmarshal ...`` on
  create/update, 422 ``patch: Invalid value`` on patch (endpoints/handlers/create.go, patch.go);
* unknown fields: dropped, with a ``Warning: 299 - "unknown field \\"spec.foo\\""`` header (fieldValidation
  ``Warn``, the server default), or the request fails with ``strict decoding error`` (``Strict``, as kubectl
  sends by default); ``Ignore`` drops them silently;
* every ``resource.Quantity`` is re-encoded canonically (``1024Mi`` -> ``1Gi``, see quantity.py);
* required fields (the schema's ``required``, which the types' validation also demands) -> 422.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any

from tests.kube.fielderr import FieldError, required
from tests.kube.quantity import QuantityError, canonicalize
from tests.kube.structural import child

Json = dict[str, Any]
PREFIX = "#/$defs/"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
# OpenAPI ``required`` entries that the types' Go validation does not enforce (zero values are fine there).
NOT_ENFORCED = {("StatefulSetSpec", "serviceName"), ("NetworkPolicySpec", "podSelector")}


@functools.lru_cache(maxsize=4)
def definitions(version: str) -> Json:
    """The OpenAPI definitions of Kubernetes ``version`` (e.g. "1.31.0") as kubernetes-validate ships them."""
    root = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    data = json.loads(root.joinpath(f"v{version}-local", "_definitions.json").read_text())
    defs: Json = data["$defs"]
    return defs


@functools.lru_cache(maxsize=4)
def kinds(version: str) -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> definition name, from each definition's x-kubernetes-group-version-kind."""
    found: dict[tuple[str, str, str], str] = {}
    for name, schema in definitions(version).items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            found.setdefault((gvk.get("group", ""), gvk["version"], gvk["kind"]), name)
    return found


class DecodeError(Exception):
    """The first error the Go JSON decoder would report."""


@dataclass
class Decoded:
    obj: Json = field(default_factory=dict)  # the object as decoded: unknown fields dropped, quantities canonical
    unknown: list[str] = field(default_factory=list)  # paths of fields the type does not have (dropped)
    missing: list[FieldError] = field(default_factory=list)  # required fields that are absent


def _types(schema: Json) -> list[str]:
    kind = schema.get("type")
    return [kind] if isinstance(kind, str) else [t for t in kind or [] if t != "null"]


def _go_type(schema: Json, defs: Json) -> str:
    ref = schema.get("$ref", "")
    if ref:
        name = ref.removeprefix(PREFIX)
        return "resource.Quantity" if name == QUANTITY else ".".join(name.split(".")[-2:])
    kind = (_types(schema) or ["object"])[0]
    if kind == "integer":
        return schema.get("format") or "int"
    if kind == "array":
        return "[]" + _go_type(schema.get("items") or {}, defs)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map[string]" + _go_type(schema["additionalProperties"], defs)
    return {"number": "float64", "boolean": "bool", "object": "map[string]interface {}"}.get(kind, kind)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def decode(obj: Json, definition: str, version: str) -> Decoded:
    """Walk ``obj`` as the Go decoder would: raise DecodeError, drop unknown fields, canonicalize quantities."""
    defs, result = definitions(version), Decoded()
    result.obj = _decode(obj, {"$ref": PREFIX + definition}, "", "", defs, result, [])
    return result


def _decode(value: Any, schema: Json, path: str, struct: str, defs: Json, out: Decoded, gopath: list[str]) -> Any:
    ref = schema.get("$ref", "")
    if ref:
        name = ref.removeprefix(PREFIX)
        if name == QUANTITY:
            if value is None:
                return None
            try:
                return canonicalize(value)
            except QuantityError as e:
                raise DecodeError(str(e)) from None
        if name == INT_OR_STRING:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
                raise DecodeError(
                    f"json: cannot unmarshal {_json_kind(value)} into Go value of type intstr.IntOrString"
                )
            return value
        return _decode(value, defs[name], path, name.rsplit(".", 1)[-1], defs, out, gopath)
    if value is None:
        return None
    kinds_ = _types(schema)
    if not kinds_:
        return value  # RawExtension, FieldsV1, JSON: anything goes
    actual = _json_kind(value)
    ok = (
        ("string" in kinds_ and actual == "string")
        or ("boolean" in kinds_ and actual == "bool")
        or ("number" in kinds_ and actual == "number")
        or ("integer" in kinds_ and actual == "number" and float(value).is_integer())
        or ("array" in kinds_ and actual == "array")
        or ("object" in kinds_ and actual == "object")
    )
    if not ok:
        shown = f"number {value}" if actual == "number" and "integer" in kinds_ else actual
        target = f"Go struct field {struct}.{'.'.join(gopath)}" if struct and gopath else "Go value"
        raise DecodeError(f"json: cannot unmarshal {shown} into {target} of type {_go_type(schema, defs)}")
    if actual == "array":
        items = schema.get("items") or {}
        return [_decode(v, items, f"{path}[{i}]", struct, defs, out, gopath) for i, v in enumerate(value)]
    if actual != "object":
        return int(value) if "integer" in kinds_ and isinstance(value, float) else value
    props, extra = schema.get("properties"), schema.get("additionalProperties")
    if props is None:
        if isinstance(extra, dict):
            return {k: _decode(v, extra, child(path, k), struct, defs, out, [*gopath, k]) for k, v in value.items()}
        return value
    result = {}
    for key, item in value.items():
        if key in props:
            result[key] = _decode(item, props[key], child(path, key), struct, defs, out, [*gopath, key])
        else:
            out.unknown.append(child(path, key))
    for name in schema.get("required") or []:
        if path.split(".")[0] == "status" or (struct, name) in NOT_ENFORCED:
            continue  # status structs are never validated for presence; see NOT_ENFORCED
        if result.get(name) is None and name not in ("apiVersion", "kind", "metadata"):
            out.missing.append(required(child(path, name)))
    return result
