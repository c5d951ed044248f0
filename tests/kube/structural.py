"""Custom resources against their CRD's structural schema: pruning, defaulting and OpenAPI value validation.

The apiserver (apiextensions-apiserver 1.31) decodes a custom resource, drops the fields its schema does not
declare (``pruning``), drops non-nullable nulls, applies ``default``s, then validates the result with
kube-openapi and the list-type invariants; each failure becomes a ``field.Error`` at the data path. Messages
here are kube-openapi's (``spec.port in body should be less than or equal to 65535``) turned into
``field.Error``s the way ``kubeOpenAPIResultToFieldErrors`` does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import ipaddress
import json
import re
from typing import Any

import re2  # type: ignore[import-untyped]  # RE2, the apiserver's regular expressions (ships with cel-python)

from tests.kube.fielderr import FieldError, go_float, invalid, required
from tests.kube.fielderr import FieldError as FE

Json = dict[str, Any]
# ObjectMeta's JSON fields: anything else in a custom resource's metadata is dropped like an unknown field.
OBJECT_META = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}  # fmt: skip


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def preserves(schema: Json) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


# --- pruning and defaulting ---------------------------------------------------------------------------------


def prune(obj: Json, schema: Json) -> list[str]:
    """Drop undeclared fields in place (the root's apiVersion/kind/metadata are the apiserver's own); return
    their paths, which the apiserver reports as ``unknown field "<path>"`` warnings or strict errors."""
    dropped: list[str] = []
    _prune_meta(obj, "", dropped)
    _prune(obj, schema, "", dropped, root=True)
    return dropped


def _prune_meta(obj: Json, path: str, dropped: list[str]) -> None:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in [k for k in meta if k not in OBJECT_META]:
            dropped.append(child(child(path, "metadata"), key))
            del meta[key]


def _prune(value: Any, schema: Json, path: str, dropped: list[str], root: bool = False) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        embedded = root or schema.get("x-kubernetes-embedded-resource")
        if embedded and not root:
            _prune_meta(value, path, dropped)
        for key in list(value):
            if embedded and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                _prune(value[key], props[key], child(path, key), dropped)
            elif isinstance(extra, dict):
                _prune(value[key], extra, child(path, key), dropped)
            elif not preserves(schema) and extra is not True and not schema.get("x-kubernetes-int-or-string"):
                dropped.append(child(path, key))
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(item, schema["items"], f"{path}[{i}]", dropped)


def prune_nulls(value: Any, schema: Json) -> None:
    """PruneNonNullableNullsWithoutDefaults: a null where the schema neither allows nor defaults one is dropped."""
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            if value[key] is None and not sub.get("nullable") and "default" not in sub:
                del value[key]
            else:
                prune_nulls(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_nulls(item, schema["items"])


def apply_defaults(value: Any, schema: Json) -> None:
    """structuraldefaulting.Default: absent (or non-nullable null) fields get a copy of their default, then
    the walk goes on into every field, defaulted ones included."""
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, sub in props.items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        for key in value:
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                if value[key] is None and "default" in sub and not sub.get("nullable"):
                    value[key] = copy.deepcopy(sub["default"])
                apply_defaults(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i in range(len(value)):
            if value[i] is None and "default" in items and not items.get("nullable"):
                value[i] = copy.deepcopy(items["default"])
            apply_defaults(value[i], items)


# --- validation ---------------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})$")
_UUID = re.compile(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
_DURATION = re.compile(r"^(-?\d+(\.\d+)?\s*(ns|us|µs|ms|s|m|h|d|w)\s*)+$")


def format_ok(fmt: str, text: str) -> bool:
    """The string formats the apiserver checks (apiextensions' supportedFormats); any other format passes."""
    fmt = fmt.replace("-", "")
    checks = {
        "datetime": lambda: bool(_DATE_TIME.match(text)),
        "date": lambda: bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text)),
        "uuid": lambda: bool(_UUID.match(text)),
        "ipv4": lambda: isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address),
        "ipv6": lambda: isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address),
        "cidr": lambda: bool(ipaddress.ip_network(text, strict=False)) and "/" in text,
        "byte": lambda: bool(base64.b64decode(text, validate=True)) or True,
        "hostname": lambda: bool(_HOSTNAME.match(text)) and len(text) <= 255,
        "mac": lambda: bool(re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){5,19}[0-9A-Fa-f]{2}", text)),
        "email": lambda: bool(re.fullmatch(r"[^@\s]+@[^@\s]+", text)),
        "duration": lambda: bool(_DURATION.match(text)),
    }
    check = checks.get(fmt)
    if check is None:
        return True
    try:
        return check()
    except (ValueError, binascii.Error):
        return False


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """A schema's pattern compiled once (re2.search compiles on every call)."""
    return re2.compile(pattern)


def _num(value: float) -> str:
    return go_float(float(value))


def validate(value: Any, schema: Json, path: str = "") -> list[FieldError]:
    """kube-openapi's SchemaValidator over a pruned, defaulted object, with the apiserver's field paths."""
    errors: list[FieldError] = []
    _validate(value, schema, path, errors)
    return errors


def _type_error(path: str, expected: str, actual: str) -> FieldError:
    name = path or "."
    return FE("Invalid value", path, actual, f"{name} in body must be of type {expected}: {json.dumps(actual)}", True)


def _validate(value: Any, schema: Json, path: str, errors: list[FieldError]) -> None:
    kind, where = json_type(value), path or "."
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if kind not in ("integer", "string") and not (kind == "null" and schema.get("nullable")):
            errors.append(_type_error(path, "integer,string", kind))
            return
    elif value is None:
        if expected and not schema.get("nullable"):
            errors.append(_type_error(path, expected, "null"))
        return
    elif expected and not (
        kind == expected
        or (kind == "integer" and expected == "number")
        or (kind == "number" and expected == "integer" and float(value).is_integer())
    ):
        errors.append(_type_error(path, expected, kind))
        return
    if kind == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FE("Too long", path, detail=f"must have at most {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(invalid(path, value, f"{where} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            errors.append(invalid(path, value, f"{where} in body should match '{schema['pattern']}'"))
        if schema.get("format") and not format_ok(schema["format"], value):
            detail = f"{where} in body must be of type {schema['format']}: {json.dumps(value)}"
            errors.append(FE("Invalid value", path, value, detail, True))
    if kind in ("integer", "number"):
        _numbers(value, schema, path, errors)
    if kind == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            detail = f"{where} in body should have at least {schema['minItems']} items"
            errors.append(invalid(path, len(value), detail))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FE("Too many", path, len(value), f"must have at most {schema['maxItems']} items"))
        if schema.get("uniqueItems") and any(value[i] in value[:i] for i in range(len(value))):
            errors.append(invalid(path, value, f"{where} in body shouldn't contain duplicates"))
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v)) for v in schema["enum"])
        errors.append(FE("Unsupported value", path, value, f"supported values: {allowed}"))
    if kind == "object":
        _object(value, schema, path, errors)
    elif kind == "array" and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _validate(item, schema["items"], f"{path}[{i}]", errors)
        errors.extend(list_type_errors(value, schema, path))


def _numbers(value: float, schema: Json, path: str, errors: list[FieldError]) -> None:
    where = path or "."
    if "maximum" in schema:
        top, exclusive = schema["maximum"], schema.get("exclusiveMaximum")
        if value > top or (exclusive and value == top):
            word = "less than" if exclusive else "less than or equal to"
            errors.append(invalid(path, value, f"{where} in body should be {word} {_num(top)}"))
    if "minimum" in schema:
        low, exclusive = schema["minimum"], schema.get("exclusiveMinimum")
        if value < low or (exclusive and value == low):
            word = "greater than" if exclusive else "greater than or equal to"
            errors.append(invalid(path, value, f"{where} in body should be {word} {_num(low)}"))
    if schema.get("multipleOf") and (value / schema["multipleOf"]) % 1:
        errors.append(invalid(path, value, f"{where} in body should be a multiple of {_num(schema['multipleOf'])}"))


def _object(value: Json, schema: Json, path: str, errors: list[FieldError]) -> None:
    where = path or "."
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        detail = f"{where} in body should have at least {schema['minProperties']} properties"
        errors.append(invalid(path, len(value), detail))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(FE("Too many", path, len(value), f"must have at most {schema['maxProperties']} items"))
    for name in schema.get("required") or []:
        if name not in value:
            errors.append(required(child(path, name)))
    props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
    for key, item in value.items():
        if not path and key in ("apiVersion", "kind", "metadata") and key not in props:
            continue
        sub = props.get(key, extra if isinstance(extra, dict) else None)
        if sub is not None:
            _validate(item, sub, child(path, key), errors)


def list_type_errors(value: list[Any], schema: Json, path: str) -> list[FieldError]:
    """structurallisttype.ValidateListSetsAndMaps: set items and map-list keys must be unique."""
    kind, errors = schema.get("x-kubernetes-list-type"), []
    if kind == "set":
        for i, item in enumerate(value):
            if item in value[:i]:
                errors.append(FE("Duplicate value", f"{path}[{i}]", item))
    elif kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: list[Json] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                errors.append(invalid(f"{path}[{i}]", item, "must be an object for an array of list-type map"))
                continue
            key = {k: item[k] for k in keys if k in item}
            if key in seen:
                errors.append(FE("Duplicate value", f"{path}[{i}]", key))
            seen.append(key)
    return errors


BLOCKING = {"Unsupported value", "Required value", "Too long", "Too many"}


def blocks_cel(errors: list[FieldError]) -> bool:
    """hasBlockingErr: after these errors the apiserver does not run the CEL rules at all."""
    return any(e.type in BLOCKING or e.type_invalid for e in errors)


NOT_CHECKED = invalid(
    "<nil>",
    None,
    "some validation rules were not checked because the object was invalid; correct the existing errors to "
    "complete validation",
)
