"""The static cost of a CRD's CEL rules, estimated as the apiserver does when the CRD is created or updated.

The apiserver refuses a CRD (apiextensions validation.go) when one rule's estimated cost exceeds
``StaticEstimatedCostLimit`` (10,000,000) or all rules together exceed ``StaticEstimatedCRDCostLimit``
(100,000,000). A rule's cost is cel-go's worst-case estimate for one evaluation (checker/cost.go, with the
Kubernetes library estimates of apiserver/pkg/cel/library/cost.go and has() free as in environment/base.go)
times the number of times it can run: the product of the enclosing lists' ``maxItems`` and maps'
``maxProperties``, or, under an unbounded list or map, how many values of the rule node's minimum serialized
size fit in a 3 MiB request. Worst-case sizes come from the schema as apiserver/pkg/cel/common/schemas.go
derives them (``maxLength`` x 4 bytes; unbounded strings are 3 MiB - 2; unbounded lists/maps as many
minimal items as fit). The estimator walks cel-python's parse tree; rule parse failures are refused too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lark

from tests.kube.cel_decl import MAX, REQUEST, Decl, decl_type
from tests.kube.cel_env import INTRODUCED, compile_rule
from tests.kube.fielderr import FieldError, forbidden, invalid

Json = dict[str, Any]
RULE_LIMIT = 10_000_000  # StaticEstimatedCostLimit
CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit
SCALARS = {"bool", "double", "duration", "int", "timestamp", "uint"}
BOOL_FUNCS = {
    "matches", "startsWith", "endsWith", "contains", "isIP", "isCIDR", "isSorted", "containsIP", "containsCIDR",
    "isUnspecified", "isLoopback", "isLinkLocalMulticast", "isLinkLocalUnicast", "isGlobalUnicast", "isURL",
    "isQuantity", "isSemver", "includes",
}  # fmt: skip
LITERALS = {
    "STRING_LIT": "string", "MLSTRING_LIT": "string", "BYTES_LIT": "bytes", "INT_LIT": "int", "UINT_LIT": "uint",
    "FLOAT_LIT": "double", "BOOL_LIT": "bool", "NULL_LIT": "null",
}  # fmt: skip
INT_FUNCS = {"size", "indexOf", "lastIndexOf", "int", "family", "prefixLength", "sign", "asInteger"}
STRING_FUNCS = {"substring", "lowerAscii", "upperAscii", "trim", "replace", "charAt", "join", "string", "find"}


def add(*xs: int) -> int:
    return min(MAX, sum(xs))


def mul(x: int, y: int) -> int:
    return min(MAX, x * y)


def factor(x: int, f: float) -> int:
    return MAX if x >= MAX else min(MAX, math.ceil(x * f))


@dataclass
class Info:
    """What the coster knows of an expression: its kind, its schema node, an explicit size, element sizes."""

    kind: str = "dyn"
    decl: Decl | None = None
    size: tuple[int, int] | None = None
    entry: tuple[int, int] | None = None  # sizes of the elements of a list/map literal
    elem_kind: str = "dyn"


class Coster:
    """cel-go's checker.Cost over a cel-python parse tree, for ``self`` of schema node ``root``."""

    def __init__(self, root: Decl, minor: int) -> None:
        self.root, self.minor = root, minor
        self.scopes: dict[str, list[Info]] = {}
        self.undeclared: list[str] = []

    def size(self, info: Info) -> tuple[int, int]:
        if info.size is not None:
            return info.size
        if info.decl is not None:
            return (0, info.decl.max_elements)
        if info.kind in SCALARS:
            return (1, 1)
        return (0, MAX)

    def of_decl(self, decl: Decl | None) -> Info:
        if decl is None:
            return Info()
        elem = decl.elem.kind if decl.elem is not None else "dyn"
        return Info(kind=decl.kind, decl=decl, elem_kind=elem)

    # -- the walk: returns (max cost, info) --

    def cost(self, tree: Any) -> tuple[int, Info]:
        if isinstance(tree, lark.Token):
            return 0, Info()
        rule, kids = tree.data, [k for k in tree.children if k is not None]
        if rule in ("expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"):
            if len(kids) == 1:
                return self.cost(kids[0])
            if rule == "expr":
                return self.call("_?_:_", None, kids)
            if rule in ("conditionalor", "conditionaland"):
                (lc, _), (rc, _) = self.cost(kids[0]), self.cost(kids[1])
                return add(lc, rc), Info(kind="bool")
            op = kids[0]
            return self.call(op.data, None, [op.children[0], kids[1]])
        if rule == "unary":
            if len(kids) == 1:
                return self.cost(kids[0])
            return self.call(kids[0].data, None, [kids[1]])
        if rule in ("member", "primary", "paren_expr"):
            return self.cost(kids[0])
        if rule == "literal":
            return 0, self.literal(kids[0])
        if rule == "ident":
            name = str(kids[0])
            if self.scopes.get(name):
                return 1, self.scopes[name][-1]
            return 1, self.of_decl(self.root) if name in ("self", "oldSelf") else Info()
        if rule == "member_dot":
            operand, name = kids[0], str(kids[1])
            oc, oi = self.cost(operand)
            extra = 1 if oi.kind in ("map", "object") else 0
            sub = oi.decl.fields.get(name) if oi.decl and oi.kind == "object" else (oi.decl.elem if oi.decl else None)
            return add(oc, extra), self.of_decl(sub)
        if rule == "member_index":
            oc, oi = self.cost(kids[0])
            ic, _ = self.cost(kids[1])
            info = self.of_decl(oi.decl.elem if oi.decl else None)
            if oi.entry is not None:
                info.size = oi.entry
            return add(oc, ic, 1), info
        if rule == "member_dot_arg":
            target, name = kids[0], str(kids[1])
            args = kids[2].children if len(kids) > 2 else []
            if name in ("all", "exists", "exists_one", "filter", "map") and args and _ident(args[0]):
                return self.macro(name, target, args)
            return self.call(name, target, list(args))
        if rule == "ident_arg":
            name, args = str(kids[0]), (kids[1].children if len(kids) > 1 else [])
            if name == "has" and len(args) == 1:
                return self.has(args[0])
            return self.call(name, None, list(args))
        if rule == "list_lit":
            elems = kids[0].children if kids else []
            total, sizes = 10, []
            for e in elems:
                c, i = self.cost(e)
                total, sizes = add(total, c), [*sizes, self.size(i)]
            entry = (min((s[0] for s in sizes), default=0), max((s[1] for s in sizes), default=0))
            kinds = {self.cost(e)[1].kind for e in elems}
            elem_kind = kinds.pop() if len(kinds) == 1 else "dyn"
            return total, Info(kind="list", size=(len(elems), len(elems)), entry=entry, elem_kind=elem_kind)
        if rule == "map_lit":
            pairs = kids[0].children if kids else []
            total = add(30, *(self.cost(p)[0] for p in pairs))
            return total, Info(kind="map", size=(len(pairs) // 2, len(pairs) // 2))
        # dot_ident, dot_ident_arg, member_object (messages): not used by CRD rules; count them as a call
        return add(1, *(self.cost(k)[0] for k in kids if isinstance(k, lark.Tree))), Info()

    def literal(self, token: lark.Token) -> Info:
        kind = LITERALS[token.type]
        if kind in ("string", "bytes"):
            text = str(token).lstrip("bBrR")
            quote = 3 if text[:3] in ('"""', "'''") else 1
            n = len(text) - 2 * quote
            return Info(kind=kind, size=(n, n))
        return Info(kind=kind, size=(1, 1))

    def has(self, arg: Any) -> tuple[int, Info]:
        """has(x.f): free in Kubernetes (PresenceTestHasCost(false)); only the operand is paid."""
        node = arg
        while isinstance(node, lark.Tree) and node.data != "member_dot" and len(node.children) == 1:
            node = node.children[0]
        if isinstance(node, lark.Tree) and node.data == "member_dot":
            return self.cost(node.children[0])[0], Info(kind="bool")
        return self.cost(arg)[0], Info(kind="bool")

    def macro(self, name: str, target: Any, args: list[Any]) -> tuple[int, Info]:
        rc, ri = self.cost(target)
        count = self.size(ri)[1]
        var = str(_ident(args[0]))
        if ri.decl is not None and ri.decl.elem is not None:
            item = self.of_decl(ri.decl.elem)
        else:  # cel-go's path for a literal's items is ["@items"], which the size estimator maps to the root
            item = Info(kind=ri.elem_kind, decl=self.root if ri.kind == "list" else None, size=None)
            if ri.entry is not None and item.decl is None:
                item.size = ri.entry
        self.scopes.setdefault(var, []).append(item)
        body = [self.cost(a)[0] for a in args[1:]]
        self.scopes[var].pop()
        # The macro expansions (parser/macro.go): init, loop condition, step and result costs.
        if name == "all":
            init, step, result = 0, add(3, body[0]), 1
        elif name == "exists":
            init, step, result = 0, add(4, body[0]), 1
        elif name == "exists_one":
            init, step, result = 0, add(2, body[0]), 2
        elif name == "filter":
            init, step, result = 10, add(13, body[0]), 1
        else:  # map(x, f) or map(x, p, f)
            init, step, result = 10, add(12, *body), 1
        info = Info(kind="bool") if name in ("all", "exists", "exists_one") else Info(kind="list", size=(0, count))
        return add(rc, init, result, mul(count, step)), info

    def call(self, name: str, target: Any, args: list[Any]) -> tuple[int, Info]:
        if name == "_?_:_":
            return self.conditional(args)
        if name in INTRODUCED and INTRODUCED[name] > self.minor - 1:
            self.undeclared.append(name)
        tc, ti = self.cost(target) if target is not None else (0, None)
        costs, infos = zip(*(self.cost(a) for a in args), strict=True) if args else ((), ())
        argsum = add(*costs)
        fn, result = self.function(name, ti, list(infos))
        return add(tc, argsum, fn), result

    def function(self, name: str, target: Info | None, args: list[Info]) -> tuple[int, Info]:
        """The call's own cost (arguments excluded) and its result, as cost.go and library/cost.go put it."""
        sz = self.size
        subject = target if target is not None else (args[0] if args else Info())
        if name in ("isSorted", "sum", "max", "min", "indexOf", "lastIndexOf", "includes") and target is not None:
            kind = "int" if name in INT_FUNCS else ("bool" if name in BOOL_FUNCS else target.elem_kind)
            if target.kind == "list":
                el = 1 + (
                    factor(
                        sz(
                            self.of_decl(target.decl.elem)
                            if target.decl and target.decl.elem
                            else Info(kind=target.elem_kind)
                        )[1],
                        0.1,
                    )
                    if target.elem_kind in ("string", "bytes")
                    else 0
                )
                return mul(sz(target)[1], el), Info(kind=kind)
            return factor(sz(target)[1], 0.1), Info(kind=kind)
        if name in ("lowerAscii", "upperAscii", "substring", "trim") and target is not None:
            return factor(sz(target)[1], 0.1), Info(kind="string", size=sz(target))
        if name in ("replace", "split") and target is not None:
            size = (0, sz(target)[1]) if name == "split" else (0, MAX)
            return factor(sz(target)[1], 0.2), Info(
                kind="list" if name == "split" else "string", size=size, elem_kind="string"
            )
        if name in ("find", "findAll") and target is not None and args:
            cost = mul(factor(add(sz(target)[1], 1), 0.1), factor(sz(args[0])[1], 0.25))
            return cost, Info(kind="string" if name == "find" else "list", size=(0, sz(target)[1]), elem_kind="string")
        if name in ("matches",) and subject is not None:
            regex = args[0] if target is not None else (args[1] if len(args) > 1 else Info())
            return mul(factor(add(sz(subject)[1], 1), 0.1), factor(sz(regex)[1], 0.25)), Info(kind="bool")
        if name in ("isIP", "isCIDR", "cidr", "url", "quantity", "isQuantity", "semver", "isSemver") and args:
            return factor(sz(args[0])[1], 0.1), Info(kind="bool" if name.startswith("is") else name)
        if name == "ip":
            if target is not None or (args and args[0].kind == "cidr"):
                return 1, Info(kind="ip")
            return factor(sz(args[0])[1], 0.1) if args else 1, Info(kind="ip")
        if name in ("containsIP", "containsCIDR"):
            extra = factor(sz(args[0])[1], 0.1) if args and args[0].kind == "string" else 0
            return add(4 if name == "containsIP" else 7, extra), Info(kind="bool")
        if name in ("masked", "prefixLength", "family", "isUnspecified", "isLoopback", "isLinkLocalMulticast",
                    "isLinkLocalUnicast", "isGlobalUnicast"):  # fmt: skip
            return 1, Info(kind={"masked": "cidr", "prefixLength": "int", "family": "int"}.get(name, "bool"))
        if name in ("startsWith", "endsWith") and args:
            return factor(sz(args[0])[1], 0.1), Info(kind="bool")
        if name == "contains" and target is not None and args:
            return mul(factor(sz(target)[1], 0.1), factor(sz(args[0])[1], 0.1)), Info(kind="bool")
        if name == "relation_in" and len(args) == 2:
            return (sz(args[1])[1] if args[1].kind == "list" else 1), Info(kind="bool")
        if name in ("relation_eq", "relation_ne") or (
            name in ("relation_lt", "relation_le", "relation_gt", "relation_ge")
            and args
            and args[0].kind in ("string", "bytes")
        ):
            if args and args[0].kind in ("ip", "cidr") and args[1].kind == args[0].kind:
                return 1, Info(kind="bool")
            return factor(min(sz(args[0])[1], sz(args[1])[1]), 0.1), Info(kind="bool")
        if name == "addition_add" and len(args) == 2 and args[0].kind in ("string", "bytes", "list"):
            total = (add(sz(args[0])[0], sz(args[1])[0]), add(sz(args[0])[1], sz(args[1])[1]))
            own = 1 if args[0].kind == "list" else factor(total[1], 0.1)
            return own, Info(kind=args[0].kind, size=total, elem_kind=args[0].elem_kind)
        kind = "bool" if name in BOOL_FUNCS or name.startswith("relation_") or name == "unary_not" else (
            "int" if name in INT_FUNCS else "string" if name in STRING_FUNCS else
            args[0].kind if name in ("addition_add", "addition_sub", "multiplication_mul", "multiplication_div",
                                     "multiplication_mod", "unary_neg", "dyn") and args else "dyn"
        )  # fmt: skip
        return 1, Info(kind=kind)

    def conditional(self, kids: list[Any]) -> tuple[int, Info]:
        (cc, _), (tc, ti), (fc, fi) = (self.cost(k) for k in kids)
        ts, fs = self.size(ti), self.size(fi)
        info = Info(kind=ti.kind if ti.kind == fi.kind else "dyn", size=(min(ts[0], fs[0]), max(ts[1], fs[1])))
        return add(cc, max(tc, fc)), info


def _ident(tree: Any) -> str | None:
    """The name if ``tree`` is a bare identifier expression (a macro's variable)."""
    while isinstance(tree, lark.Tree) and len(tree.children) == 1:
        if tree.data == "ident":
            return str(tree.children[0])
        tree = tree.children[0]
    return None


# --- walking a CRD -------------------------------------------------------------------------------------------


@dataclass
class RuleCost:
    path: str  # the field path of the rule in the CRD, as the apiserver names it
    rule: str
    cost: int
    per_call: int
    cardinality: int


def _rules(
    schema: Json, path: str, card: int | None, root: bool, out: list[tuple[str, Json, Json, int | None, bool]]
) -> None:
    for i, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        out.append((f"{path}.x-kubernetes-validations[{i}].rule", rule, schema, card, root))
    kind = schema.get("type")
    extra = schema.get("additionalProperties")
    if kind == "array":
        factor_ = schema.get("maxItems")
    elif kind == "object" and isinstance(extra, dict):
        factor_ = schema.get("maxProperties")
    else:
        factor_ = 1
    sub_card = None if card is None or factor_ is None else mul(card, max(0, factor_))
    for name, prop in (schema.get("properties") or {}).items():
        _rules(prop, f"{path}.properties[{name}]", sub_card, bool(prop.get("x-kubernetes-embedded-resource")), out)
    if isinstance(schema.get("items"), dict):
        items = schema["items"]
        _rules(items, f"{path}.items", sub_card, bool(items.get("x-kubernetes-embedded-resource")), out)
    if isinstance(extra, dict):
        _rules(extra, f"{path}.additionalProperties", sub_card, bool(extra.get("x-kubernetes-embedded-resource")), out)


def version_rule_costs(schema: Json, prefix: str = "", minor: int = 31) -> tuple[list[RuleCost], list[FieldError]]:
    """Every rule of one version's openAPIV3Schema with its estimated cost; compile errors on the side."""
    found: list[tuple[str, Json, Json, int | None, bool]] = []
    _rules(schema, prefix, 1, True, found)
    costs, errors = [], []
    for path, rule, node, card, root in found:
        decl = decl_type(node, root) or Decl("dyn", REQUEST - 2, 1)
        try:
            tree = compile_rule(rule["rule"])
        except Exception as e:  # celpy.CELParseError and lark errors
            errors.append(invalid(path, rule["rule"], f"compilation failed: ERROR: <input>: {str(e).splitlines()[0]}"))
            continue
        coster = Coster(decl, minor)
        per_call = coster.cost(tree)[0]
        for name in coster.undeclared:
            errors.append(
                invalid(
                    path,
                    rule["rule"],
                    f"compilation failed: ERROR: <input>: undeclared reference to '{name}' (in container '')",
                )
            )
        cardinality = card if card is not None else REQUEST // (decl.min_size + 1)
        costs.append(
            RuleCost(path, rule["rule"], 0 if per_call == 0 else mul(per_call, cardinality), per_call, cardinality)
        )
    return costs, errors


def rule_costs(crd: Json, minor: int = 31) -> list[tuple[str, str, int]]:
    """(field path, rule, estimated cost) for every CEL rule of every version of ``crd``."""
    out = []
    for i, version in enumerate((crd.get("spec") or {}).get("versions") or []):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema:
            costs, _ = version_rule_costs(schema, f"spec.versions[{i}].schema.openAPIV3Schema", minor)
            out += [(c.path, c.rule, c.cost) for c in costs]
    return out


def _factor(cost: int, limit: int) -> str:
    ratio = cost / limit
    return "more than 100x" if ratio > 100 else f"{ratio:f}x" if ratio < 1.5 else f"{ratio:.1f}x"


def _message(what: str, cost: int, limit: int) -> str:
    return (f"{what} exceeds budget by factor of {_factor(cost, limit)} (try simplifying the rule, or adding maxItems, "
            "maxProperties, and maxLength where arrays, maps, and strings are declared)")  # fmt: skip


def crd_errors(crd: Json, minor: int = 31) -> list[FieldError]:
    """The refusals of a CRD's rules: parse errors, undeclared functions, and their cost."""
    errors: list[FieldError] = []
    for i, version in enumerate((crd.get("spec") or {}).get("versions") or []):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not schema:
            continue
        prefix = f"spec.versions[{i}].schema.openAPIV3Schema"
        costs, compile_errors = version_rule_costs(schema, prefix, minor)
        errors += compile_errors
        errors += [
            forbidden(c.path, _message("estimated rule cost", c.cost, RULE_LIMIT)) for c in costs if c.cost > RULE_LIMIT
        ]
        total = min(MAX, sum(c.cost for c in costs))
        if total > CRD_LIMIT:
            worst = sorted((c for c in costs if c.cost >= CRD_LIMIT // 100), key=lambda c: -c.cost)[:4]
            msg = "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
            errors += [forbidden(c.path, msg) for c in worst]
            errors.append(
                forbidden(
                    prefix,
                    _message(
                        "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                        total,
                        CRD_LIMIT,
                    ),
                )
            )
    return errors
