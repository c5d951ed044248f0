"""CEL declaration types of CRD schema nodes, with the worst-case sizes the apiserver's cost estimate uses.

Mirrors apiserver/pkg/cel/common/schemas.go ``SchemaDeclType`` (Kubernetes 1.31): a string's max size is
``maxLength`` x 4 bytes (or the longest ``enum`` value, or 3 MiB - 2), a list or map without ``maxItems`` /
``maxProperties`` holds as many minimum-size elements as fit in a 3 MiB request, scalars have size 0, and
each node knows its minimum serialized size (which bounds how often a rule can run under unbounded lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.kube.cel_env import escape

Json = dict[str, Any]
MAX = 2**64 - 1
REQUEST = 3 * 1024 * 1024  # celconfig.MaxRequestSizeBytes


@dataclass
class Decl:
    """apiserver cel.DeclType, as far as the estimate needs it."""

    kind: str
    max_elements: int = 0
    min_size: int = 1
    fields: dict[str, Decl] = field(default_factory=dict)
    elem: Decl | None = None


def decl_type(s: Json, root: bool = False) -> Decl | None:
    """common.SchemaDeclType (Kubernetes 1.31)."""
    if s.get("x-kubernetes-int-or-string"):
        return Decl("dyn", REQUEST - 2, 1)
    if root:
        # Structural.WithTypeAndObjectMeta: these four always win over what the schema declares there (a CRD's
        # root declares `metadata: {type: object}`, and its rules still see metadata.name as an unbounded string).
        s = {**s, "properties": {**(s.get("properties") or {}),
             "kind": {"type": "string"}, "apiVersion": {"type": "string"},
             "metadata": {"type": "object", "properties": {"name": {"type": "string"},
                                                           "generateName": {"type": "string"}}}}}  # fmt: skip
    kind = s.get("type")
    if kind == "array":
        items = s.get("items")
        elem = decl_type(items, bool(items.get("x-kubernetes-embedded-resource"))) if items else None
        if elem is None:
            return None
        top = max(0, s["maxItems"]) if "maxItems" in s else (REQUEST - 2) // (elem.min_size + 1)
        return Decl("list", top, 2, elem=elem)
    if kind == "object":
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            elem = decl_type(extra, bool(extra.get("x-kubernetes-embedded-resource")))
            if elem is None:
                return None
            top = max(0, s["maxProperties"]) if "maxProperties" in s else (REQUEST - 2) // (elem.min_size + 6)
            return Decl("map", top, 2, elem=elem)
        obj, required = Decl("object", 0, 2), set(s.get("required") or [])
        for name, prop in (s.get("properties") or {}).items():
            sub = decl_type(prop, bool(prop.get("x-kubernetes-embedded-resource")))
            if sub is None:
                continue
            escaped = escape(name)
            if escaped is not None:
                obj.fields[escaped] = sub
            if name in required and "default" not in prop:
                obj.min_size += len(name) + sub.min_size + 4
        return obj
    if kind == "string":
        fmt = s.get("format")
        if fmt == "byte":
            return Decl("bytes", max(0, s["maxLength"]) if "maxLength" in s else REQUEST - 2, 2)
        if fmt in ("duration", "date", "date-time"):
            sizes = {"duration": (32, 3), "date": (12, 12), "date-time": (32, 21)}[fmt]
            return Decl("duration" if fmt == "duration" else "timestamp", *sizes)
        if "maxLength" in s:
            return Decl("string", max(0, s["maxLength"]) * 4, 2)
        if s.get("enum"):
            return Decl("string", max(len(v) for v in s["enum"] if isinstance(v, str)), 2)
        return Decl("string", REQUEST - 2, 2)
    return {"boolean": Decl("bool", 0, 4), "number": Decl("double", 0, 1), "integer": Decl("int", 0, 1)}.get(kind or "")
