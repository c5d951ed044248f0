"""``x-kubernetes-validations`` rules evaluated by a real CEL interpreter, as the apiserver runs them on write.

Each rule runs at its schema node with ``self`` bound to the (defaulted) value there, and, for transition
rules on update, ``oldSelf`` bound to the correlated old value (same property path, same map key, same
list-type=map key; a transition rule without an old value is skipped). From 1.30 (CRDValidationRatcheting, beta
and on by default) a value equal to its old value is ratcheted: its rules that do not use ``oldSelf`` are not
run, since an error there would be ignored, while transition rules still are. A false rule becomes
``field.Invalid(<path>, <schema type>, <message>)`` (apiextensions-apiserver schema/cel/validation.go,
Kubernetes 1.31; from 1.35 the value is left out for objects and arrays, and scalars show their value).
"""

from __future__ import annotations

import functools
from typing import Any

import lark
from celpy import CELEvalError, celtypes

from tests.kube.cel_env import compile_rule, program, to_cel
from tests.kube.fielderr import OMIT, FieldError, forbidden, invalid, required
from tests.kube.structural import child

Json = dict[str, Any]
_MISSING = object()


@functools.lru_cache(maxsize=512)
def _compiled(rule: str) -> tuple[Any, bool]:
    ast = compile_rule(rule)
    uses_old = any(isinstance(t, lark.Token) and t.value == "oldSelf" for t in ast.scan_values(lambda _: True))
    return program(ast), uses_old


def rule_message(rule: Json) -> str:
    """ruleMessageOrDefault."""
    message = (rule.get("message") or "").strip()
    return message or f"failed rule: {rule['rule'].strip()}"


def _error_string(rule: Json) -> str:
    return (rule.get("message") or "").strip() or rule["rule"].strip()


def _go_error(err: CELEvalError) -> str:
    """cel-go's wording for the common runtime errors."""
    text, cause = str(err.args[0]) if err.args else str(err), err.args[1] if len(err.args) > 1 else None
    if cause is KeyError or "no such member" in text or "no such key" in text:
        detail = err.args[2] if len(err.args) > 2 else None
        key = detail[0] if isinstance(detail, tuple) and detail else text.split(":")[-1].strip(" '")
        return f"no such key: {key}"
    if cause is IndexError or "index" in text:
        return "index out of bounds"
    if cause is ZeroDivisionError or "divide by zero" in text:
        return "division by zero"
    if "overload" in text:
        return "no such overload"
    return text


def _value_for(value: Any, schema: Json, minor: int) -> Any:
    kind = schema.get("type", "")
    if minor < 35:
        return kind
    return OMIT if kind in ("object", "array") else value


def _run(rule: Json, value: Any, old: Any, schema: Json, path: str, minor: int, errors: list[FieldError]) -> None:
    prog, uses_old = _compiled(rule["rule"])
    if uses_old and old is _MISSING:
        return
    activation = {"self": to_cel(value, schema)}
    if uses_old:
        activation["oldSelf"] = to_cel(old, schema)
    where = path or "<nil>"
    try:
        result = prog.evaluate(activation)
    except CELEvalError as e:
        result = e
    if isinstance(result, CELEvalError):
        errors.append(
            invalid(where, schema.get("type", ""), f"{_go_error(result)} evaluating rule: {_error_string(rule)}")
        )
        return
    if result == celtypes.BoolType(True):
        return
    if rule.get("fieldPath"):
        where = child(path, rule["fieldPath"].lstrip("."))
    detail = rule_message(rule)
    if rule.get("messageExpression"):
        msg_prog, _ = _compiled(rule["messageExpression"])
        try:
            text = msg_prog.evaluate(activation)
        except CELEvalError as e:
            text = e
        if isinstance(text, str) and text.strip() and "\n" not in text:
            detail = text.strip()
    reason = rule.get("reason")
    if reason == "FieldValueForbidden":
        errors.append(forbidden(where, detail))
    elif reason == "FieldValueRequired":
        errors.append(required(where, detail))
    elif reason == "FieldValueDuplicate":
        errors.append(FieldError("Duplicate value", where, _value_for(value, schema, minor)))
    else:
        errors.append(invalid(where, _value_for(value, schema, minor), detail))


def evaluate(schema: Json, value: Any, old: Any = _MISSING, path: str = "", minor: int = 31) -> list[FieldError]:
    """Run every rule of ``schema`` and its children over ``value`` (``old``: the stored object on update)."""
    errors: list[FieldError] = []
    _walk(schema, value, old, path, minor, errors)
    return errors


_RATCHETING_MINOR = 30
"""CRDValidationRatcheting: alpha in 1.28, beta (on by default) in 1.30, GA in 1.33."""


def _walk(schema: Json, value: Any, old: Any, path: str, minor: int, errors: list[FieldError]) -> None:
    if value is None:
        return
    unchanged = minor >= _RATCHETING_MINOR and old is not _MISSING and value == old
    if unchanged and not _has_transition_rules(schema):
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        if not unchanged or _compiled(rule["rule"])[1]:
            _run(rule, value, old, schema, path, minor, errors)
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None or (not path and key in ("apiVersion", "kind", "metadata") and key not in props):
                continue
            old_item = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            _walk(sub, item, old_item, child(path, key), minor, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        keys = schema.get("x-kubernetes-list-map-keys") or []
        by_key: dict[str, Any] = {}
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            by_key = {repr([o.get(k) for k in keys]): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(value):
            old_item = by_key.get(repr([item.get(k) for k in keys]), _MISSING) if isinstance(item, dict) else _MISSING
            _walk(items, item, old_item, f"{path}[{i}]", minor, errors)


def _has_transition_rules(schema: Any) -> bool:
    """Whether ``schema`` or a node below it has a rule that uses ``oldSelf`` (those are never ratcheted)."""
    if not isinstance(schema, dict):
        return False
    key = id(schema)
    cached = _TRANSITION_CACHE.get(key)
    if cached is None or cached[0] is not schema:
        found = any(_compiled(r["rule"])[1] for r in schema.get("x-kubernetes-validations") or []) or any(
            _has_transition_rules(s)
            for s in (
                *(schema.get("properties") or {}).values(),
                schema.get("items"),
                schema.get("additionalProperties"),
            )
        )
        cached = _TRANSITION_CACHE[key] = (schema, found)
    return cached[1]


_TRANSITION_CACHE: dict[int, tuple[Json, bool]] = {}
"""id(schema node) -> (the node, so a reused id is detected; has transition rules)."""


def has_rules(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("x-kubernetes-validations"):
        return True
    subs = [*(schema.get("properties") or {}).values(), schema.get("items"), schema.get("additionalProperties")]
    return any(has_rules(s) for s in subs)
