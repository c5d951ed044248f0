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

import collections
import functools
import json
from typing import Any

import lark
from celpy import CELEvalError, celtypes

from tests.kube.cel_env import compile_rule, escape, program, to_cel
from tests.kube.fielderr import OMIT, FieldError, forbidden, invalid, required
from tests.kube.structural import child

Json = dict[str, Any]
_MISSING = object()


@functools.lru_cache(maxsize=512)
def _compiled(rule: str) -> tuple[Any, bool]:
    ast = compile_rule(rule)
    uses_old = any(isinstance(t, lark.Token) and t.value == "oldSelf" for t in ast.scan_values(lambda _: True))
    return program(ast), uses_old


@functools.lru_cache(maxsize=512)
def self_paths(rule: str) -> Paths | None:
    """What of ``self`` a rule can see: the field chains it selects (``self.metadata.name`` -> metadata: {name:
    whole}), or None when it uses ``self`` itself (``self.size()``, ``self[k]``, ``self == ...``, a macro over
    ``self``). A rule sees nothing else, so binding only those fields gives the same result, errors included."""
    chains: list[list[str]] = []

    def walk(node: lark.Tree[Any], parents: list[lark.Tree[Any]]) -> bool:
        if node.data == "primary" and _is_self(node):
            i, chain = len(parents) - 1, []  # parents[i]: the member around this primary
            while i >= 1 and parents[i - 1].data == "member_dot" and parents[i - 1].children[0] is parents[i]:
                chain.append(str(parents[i - 1].children[1]))
                i -= 2  # the member around that member_dot
            chains.append(chain)
            return bool(chain)
        return all(walk(c, [*parents, node]) for c in node.children if isinstance(c, lark.Tree))

    if not walk(compile_rule(rule), []):
        return None
    paths: Paths = {}
    for chain in sorted(chains, key=len):  # a shorter chain takes its whole value: longer ones add nothing
        node: Paths | None = paths
        for depth, name in enumerate(chain):
            assert node is not None
            if name in node and node[name] is None:
                break
            if depth == len(chain) - 1:
                node[name] = None
            else:
                node = node.setdefault(name, {})
    return paths


Paths = dict[str, "Paths | None"]
"""Field name (as CEL spells it) -> the fields below it a rule selects, or None: the whole value."""


def _is_self(primary: lark.Tree[Any]) -> bool:
    """Whether a ``primary`` node is the identifier ``self``."""
    children = primary.children
    if len(children) != 1 or not isinstance(children[0], lark.Tree) or children[0].data != "ident":
        return False
    return [str(t) for t in children[0].children] == ["self"]


def project(value: Any, schema: Json, paths: Paths) -> Any:
    """`value` with only the fields on `paths`, each shown as `to_cel` shows it (escaped names under
    ``properties``, plain keys in a map or a free-form object)."""
    if not isinstance(value, dict) or schema.get("x-kubernetes-int-or-string"):
        return value
    props, extra = schema.get("properties"), schema.get("additionalProperties")
    typed = bool(props) and not isinstance(extra, dict)
    out = {}
    for key, item in value.items():
        if typed and key not in props:
            continue  # not visible to CEL at all
        name = escape(key) if typed else key
        if name is None or name not in paths:
            continue
        below = paths[name]
        sub = props[key] if typed else (extra if isinstance(extra, dict) else {})
        out[key] = item if below is None else project(item, sub or {}, below)
    return out


_RESULTS: collections.OrderedDict[tuple[str, int, str], tuple[Json, Any]] = collections.OrderedDict()
"""(rule, id(schema node), the JSON of what the rule sees) -> (the node, its result): CEL is a pure function
of its bindings, so a rule is not run again over what it saw before (a relay's status patches keep its name)."""
_RESULTS_LIMIT = 4096


def _evaluate(prog: Any, rule: str, value: Any, old: Any, schema: Json, uses_old: bool) -> Any:
    """The rule's result (a CELEvalError when it failed), memoized for rules without oldSelf on what they see
    (the whole value when a rule uses ``self`` itself, e.g. ``isCIDR(self)`` on each allowed network)."""
    if uses_old:
        return _run_program(prog, _activation(value, old, schema, uses_old))
    paths = self_paths(rule)
    seen = value if paths is None else project(value, schema, paths)
    key = (rule, id(schema), json.dumps(seen))
    cached = _RESULTS.get(key)
    if cached is not None and cached[0] is schema:
        _RESULTS.move_to_end(key)
        return cached[1]
    result = _run_program(prog, {"self": to_cel(seen, schema)})
    _RESULTS[key] = (schema, result)
    if len(_RESULTS) > _RESULTS_LIMIT:
        _RESULTS.popitem(last=False)
    return result


def _activation(value: Any, old: Any, schema: Json, uses_old: bool) -> Json:
    activation = {"self": to_cel(value, schema)}
    if uses_old:
        activation["oldSelf"] = to_cel(old, schema)
    return activation


_TRUE = celtypes.BoolType(True)


def _run_program(prog: Any, activation: Json) -> Any:
    try:
        return prog.evaluate(activation)
    except CELEvalError as e:
        return e


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
    result = _evaluate(prog, rule["rule"], value, old, schema, uses_old)
    where = path or "<nil>"
    if isinstance(result, CELEvalError):
        errors.append(
            invalid(where, schema.get("type", ""), f"{_go_error(result)} evaluating rule: {_error_string(rule)}")
        )
        return
    if result == _TRUE:
        return
    if rule.get("fieldPath"):
        where = child(path, rule["fieldPath"].lstrip("."))
    detail = rule_message(rule)
    if rule.get("messageExpression"):  # it may read any of self: bound whole
        msg_prog, _ = _compiled(rule["messageExpression"])
        try:
            text = msg_prog.evaluate(_activation(value, old, schema, uses_old))
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
