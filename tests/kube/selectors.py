"""Label and field selectors, as list and watch requests give them."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.kube.patches import jsonpath
from tests.kube.vocab import Json, fail

# --- selectors ----------------------------------------------------------------------------------------------

Matcher = Callable[[Json], bool]
_REQ = re.compile(r"^(!?)\s*([\w./-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*))?$")


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t.strip() for t in [*terms, cur] if t.strip()]


def label_matcher(text: str) -> Matcher:
    """Equality (=, ==, !=), set (in, notin) and existence (key, !key) requirements, ANDed."""
    reqs: list[tuple[str, str, frozenset[str]]] = []
    for term in _split_terms(text):
        m = _REQ.match(term)
        if m is None:
            raise fail(400, "BadRequest", f"unable to parse requirement: {term!r}")
        neg, key, op, value = m.group(1), m.group(2), (m.group(3) or "").strip(), (m.group(4) or "").strip()
        if op in ("in", "notin"):
            if not (value.startswith("(") and value.endswith(")")):
                raise fail(400, "BadRequest", f"unable to parse requirement: {term!r}: values must be in ()")
            reqs.append((key, op, frozenset(v.strip() for v in value[1:-1].split(","))))
        elif op:
            reqs.append((key, "notin" if op == "!=" else "in", frozenset([value])))
        else:
            reqs.append((key, "!" if neg else "exists", frozenset()))

    def match(obj: Json) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(
            labels.get(key) in values
            if op == "in"
            else labels.get(key) not in values  # absent keys match notin and !=, as in Kubernetes
            if op == "notin"
            else (key in labels) == (op == "exists")
            for key, op, values in reqs
        )

    return match


def field_matcher(text: str) -> Matcher:
    """metadata.name/metadata.namespace (and, leniently, any simple path) with =, ==, !=."""
    reqs: list[tuple[str, bool, str]] = []
    for term in _split_terms(text):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", term)
        if m is None:
            raise fail(400, "BadRequest", f"invalid field selector: {term!r}")
        reqs.append((m.group(1), m.group(2) != "!=", m.group(3).strip()))

    def match(obj: Json) -> bool:
        return all((str(jsonpath(obj, "." + path) or "") == value) == eq for path, eq, value in reqs)

    return match
