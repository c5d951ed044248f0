"""Pydantic's JSON schema rewritten as a Kubernetes *structural* schema.

Pydantic's output is not structural: $refs, anyOf for Optional, lookahead patterns (Go's RE2 has
none), null defaults, additionalProperties. `structural()` inlines the models, flattens Optional,
turns int|str into x-kubernetes-int-or-string, rewrites the domain pattern's length guard into
min/maxLength, and attaches the CEL rules of `crdgen.rules`. Every field must have a description
(a docstring under it), so `kubectl explain` is never empty.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from crdgen.rules import FIELD_HINTS, RULES, Rule

Schema = dict[str, Any]

_LOOKAHEAD_LENGTH = re.compile(r"^\^\(\?=\.\{(\d+),(\d+)\}\$\)")
"""Go's RE2 (used by the apiserver) has no lookahead; the domain pattern's length guard becomes min/maxLength."""


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

    def __init__(self, root: Schema, rules: Mapping[str, Sequence[Rule]], hints: Mapping[str, Schema]) -> None:
        self.defs: dict[str, Schema] = root.get("$defs", {})
        self.root = root
        self.rules = rules
        self.hints = hints

    def model(self, name: str, node: Schema) -> Schema:
        out: Schema = {"type": "object", "description": node["description"]}
        props = node.get("properties", {})
        if props:
            out["properties"] = {key: self.field(name, key, value) for key, value in props.items()}
        if node.get("required"):
            out["required"] = list(node["required"])
        if node.get("additionalProperties") is True and not props:
            out["x-kubernetes-preserve-unknown-fields"] = True
        rules = self.rules.get(name, [])
        if rules:
            out["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
        return out

    def field(self, model: str, key: str, node: Schema) -> Schema:
        out = self.node(node, f"{model}.{key}")
        if "description" not in out:
            raise ValueError(f"{model}.{key} has no description: add a docstring under the field")
        out.update(self.hints.get(f"{model}.{key}", {}))
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
            rules = self.rules.get(where, [])
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


def structural(
    model: type[BaseModel], rules: Mapping[str, Sequence[Rule]] = RULES, hints: Mapping[str, Schema] = FIELD_HINTS
) -> Schema:
    """The model's JSON schema rewritten as a Kubernetes structural OpenAPI v3 schema, with `rules`
    (by model name, or "Model.field" for the items of a list field) and `hints` (by "Model.field")."""
    return _ordered(_Converter(model.model_json_schema(by_alias=True), rules, hints).convert())
