"""JSONPath for printer columns and scale paths, and the three patch kinds (merge, strategic, JSON)."""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.kube.vocab import Json, fail

MERGE_KEYS = {  # strategic-merge-patch: list field -> merge key (simplified: by field name, not by type path)
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "ports": "containerPort",
    "volumeClaimTemplates": "metadata",
}
PRIMITIVE_SETS = {"finalizers"}  # lists of scalars with patchStrategy=merge (union)
ATOMIC_LISTS = {"volumeClaimTemplates"}  # listed above only to be excluded from keyed merging

# --- JSONPath (the simple subset used by printer columns and scale paths) ---------------------------------

_STEP = re.compile(r'\.([^.\[]+)|\[(\d+)\]|\[\?\(@\.([\w.-]+)\s*==\s*["\']?([^"\')]*)["\']?\)\]')


def jsonpath(obj: Any, path: str) -> Any:
    """Evaluate ``.a.b[0].c`` and ``[?(@.type=="Ready")]`` steps; None when absent."""
    pos, path = 0, path.strip().removeprefix("{").removesuffix("}")
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath: {path}")
        pos = m.end()
        if m.group(1) is not None:
            obj = obj.get(m.group(1)) if isinstance(obj, dict) else None
        elif m.group(2) is not None:
            idx = int(m.group(2))
            obj = obj[idx] if isinstance(obj, list) and idx < len(obj) else None
        else:
            hits = [i for i in obj or [] if isinstance(i, dict) and str(jsonpath(i, "." + m.group(3))) == m.group(4)]
            obj = hits[0] if hits else None
        if obj is None:
            return None
    return obj


def set_path(obj: Json, path: str, value: Any) -> None:
    keys = path.strip(".").split(".")
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
    obj[keys[-1]] = value


# --- patches ------------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, everything else replaces.

    The result is new along the patch's paths and shares the target's untouched subtrees (stored bodies are
    never changed in place); copying the whole target at every level made a patch cost O(size x depth)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_patch(target: Any, patch: Any, name: str = "") -> Any:
    """Strategic merge: like merge-patch, but lists of named items merge by their key instead of replacing."""
    if isinstance(patch, list):
        if name in PRIMITIVE_SETS and isinstance(target, list):
            return target + [i for i in patch if i not in target]
        key = MERGE_KEYS.get(name)
        if key is None or name in ATOMIC_LISTS or not isinstance(target, list):
            return [_strip_directives(i) for i in patch]
        if name == "ports" and not any(isinstance(i, dict) and key in i for i in patch + target):
            key = "port" if any(isinstance(i, dict) and "port" in i for i in patch) else "name"
        result = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict):
                continue
            pos = next((i for i, t in enumerate(result) if isinstance(t, dict) and t.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                if pos is not None:
                    del result[pos]
            elif pos is None:
                result.append(_strip_directives(item))
            else:
                result[pos] = strategic_patch(result[pos], item)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    merged: Json = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            field_name = k.split("/", 1)[1]
            merged[field_name] = [i for i in merged.get(field_name, []) if i not in v]
        elif k.startswith("$"):
            continue  # $setElementOrder, $retainKeys, $patch: ordering/pruning hints we do not emulate
        elif v is None:
            merged.pop(k, None)
        else:
            merged[k] = strategic_patch(merged.get(k), v, k)
    return merged


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902. A failed ``test`` is 422, as kopf expects for its optimistic finalizer patches."""
    if not isinstance(ops, list):
        raise fail(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise fail(400, "BadRequest", f"malformed json patch operation: {op!r}")
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise fail(422, "Invalid", f"the server rejected our request due to an error in our request: {e}") from None
    return doc


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def _apply_op(doc: Any, op: Json) -> Any:
    parts = _pointer(op["path"])
    kind = op["op"]
    if kind == "test":
        if _walk(doc, parts) != op.get("value"):
            raise ValueError(f"testing value {op['path']} failed")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
        if kind == "move":
            doc = _apply_op(doc, {"op": "remove", "path": op["from"]})
        return _apply_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        return None if kind == "remove" else copy.deepcopy(op["value"])
    parent, last = _walk(doc, parts[:-1]), parts[-1]
    if kind == "remove":
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    elif kind in ("add", "replace"):
        if "value" not in op:
            raise ValueError(f"{kind} without a value")
        if isinstance(parent, list):
            if kind == "add":
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[int(last)] = copy.deepcopy(op["value"])
        elif kind == "replace" and last not in parent:
            raise KeyError(f"replace of a missing key {op['path']}")
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unknown op {kind!r}")
    return doc
