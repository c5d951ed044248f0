"""The CEL environment of CRD validation rules: cel-python plus the Kubernetes libraries, with typed values.

``cel-python`` (celpy) is a complete CEL parser and interpreter with the standard macros (``all``, ``exists``,
``exists_one``, ``filter``, ``map``, ``has``) and RE2 ``matches``. The apiserver adds libraries on top
(k8s.io/apiserver/pkg/cel/library and cel-go's ext.Strings); those a rule can call are implemented here with
the apiserver's semantics: the strings extension (version 2), the lists and regex libraries, and the
1.30+ ``ip``/``cidr`` libraries. ``to_cel`` binds ``self`` the way the apiserver types it from the schema:
``number`` fields are doubles even when written as ``5``, ``integer`` fields ints, property names escaped.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Callable
from typing import Any

import celpy
import re2  # type: ignore[import-untyped]
from celpy import celtypes

Json = dict[str, Any]
RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
}  # fmt: skip


def escape(name: str) -> str | None:
    """apiserver ``cel.Escape``: property names as CEL sees them (``foo-bar`` -> ``foo__dash__bar``)."""
    if name in RESERVED:
        return f"__{name}__"
    out = name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
    out = out.replace("/", "__slash__")
    if not out or not (out[0].isalpha() or out[0] == "_") or not all(c.isalnum() or c == "_" for c in out):
        return None  # unescapable names are not visible to CEL
    return out


def to_cel(value: Any, schema: Json | None) -> Any:
    """A JSON value as a CEL value of the schema's declared type."""
    if value is None:
        return None
    schema = schema or {}
    if schema.get("x-kubernetes-int-or-string"):
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    kind = schema.get("type")
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props and not isinstance(extra, dict):
            fields = {}
            for key, item in value.items():
                name = escape(key)
                if name is not None and key in props:
                    fields[celtypes.StringType(name)] = to_cel(item, props[key])
            return celtypes.MapType(fields)
        sub = extra if isinstance(extra, dict) else None
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, sub) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items")) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int) or (kind == "integer" and isinstance(value, float)):
        return celtypes.IntType(int(value))
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    fmt = schema.get("format")
    if fmt == "byte":
        return celtypes.BytesType(base64.b64decode(value))
    if fmt == "date-time":
        return celtypes.TimestampType(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))
    if fmt == "duration":
        return celtypes.DurationType(value)
    return celtypes.StringType(value)


# --- ext.Strings (version 2) --------------------------------------------------------------------------------


def _index_of(target: Any, sub: Any, offset: Any = None) -> Any:
    if isinstance(target, list):  # library.Lists: list.indexOf(elem)
        return celtypes.IntType(next((i for i, v in enumerate(target) if v == sub), -1))
    start = int(offset or 0)
    if start < 0 or start > len(target):
        raise ValueError(f"index out of range: {start}")
    return celtypes.IntType(str(target).find(str(sub), start))


def _last_index_of(target: Any, sub: Any, offset: Any = None) -> Any:
    if isinstance(target, list):
        hits = [i for i, v in enumerate(target) if v == sub]
        return celtypes.IntType(hits[-1] if hits else -1)
    text = str(target)
    end = len(text) if offset is None else int(offset)
    if end < 0 or end > len(text):
        raise ValueError(f"index out of range: {end}")
    return celtypes.IntType(text.rfind(str(sub), 0, end + len(str(sub))))


def _substring(target: Any, start: Any, end: Any = None) -> Any:
    text, begin = str(target), int(start)
    stop = len(text) if end is None else int(end)
    if begin < 0 or begin > len(text) or stop > len(text):
        raise ValueError(f"index out of range: {begin if begin < 0 or begin > len(text) else stop}")
    if stop < begin:
        raise ValueError(f"invalid substring range. start: {begin}, end: {stop}")
    return celtypes.StringType(text[begin:stop])


def _char_at(target: Any, index: Any) -> Any:
    text, i = str(target), int(index)
    if i < 0 or i > len(text):
        raise ValueError(f"index out of range: {i}")
    return celtypes.StringType(text[i : i + 1])


def _replace(target: Any, old: Any, new: Any, count: Any = None) -> Any:
    n = -1 if count is None else int(count)
    return celtypes.StringType(str(target).replace(str(old), str(new), n))


def _split(target: Any, sep: Any, count: Any = None) -> Any:
    n = -1 if count is None else int(count)
    if n == 0:
        return celtypes.ListType([])
    parts = str(target).split(str(sep), n - 1) if n > 0 else str(target).split(str(sep))
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _join(target: Any, sep: Any = "") -> Any:
    return celtypes.StringType(str(sep).join(str(v) for v in target))


def _trim(target: Any) -> Any:
    return celtypes.StringType(str(target).strip(" \t\n\v\f\r\x85\xa0"))


def _lower(target: Any) -> Any:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in str(target)))


def _upper(target: Any) -> Any:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in str(target)))


# --- library.Lists and library.Regex ------------------------------------------------------------------------


def _is_sorted(target: Any) -> Any:
    return celtypes.BoolType(all(target[i] <= target[i + 1] for i in range(len(target) - 1)))


def _sum(target: Any) -> Any:
    return sum(target[1:], target[0]) if target else celtypes.IntType(0)


def _min(target: Any) -> Any:
    if not target:
        raise ValueError("min called on empty list")
    return min(target)


def _max(target: Any) -> Any:
    if not target:
        raise ValueError("max called on empty list")
    return max(target)


def _find(target: Any, pattern: Any) -> Any:
    found = re2.search(str(pattern), str(target))
    return celtypes.StringType(found.group(0) if found else "")


def _find_all(target: Any, pattern: Any, count: Any = None) -> Any:
    hits = [m.group(0) for m in re2.finditer(str(pattern), str(target))]
    if count is not None and int(count) >= 0:
        hits = hits[: int(count)]
    return celtypes.ListType([celtypes.StringType(h) for h in hits])


# --- library.IP and library.CIDR ----------------------------------------------------------------------------


class IP:
    """The ``net.IP`` CEL type of library.IP."""

    def __init__(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.addr = addr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IP) and other.addr == self.addr

    def __hash__(self) -> int:
        return hash(self.addr)

    def __str__(self) -> str:
        return str(self.addr)


class CIDR:
    """The ``net.CIDR`` CEL type of library.CIDR: an address and a prefix length (host bits kept)."""

    def __init__(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> None:
        self.addr, self.bits = addr, bits
        self.net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CIDR) and (other.addr, other.bits) == (self.addr, self.bits)

    def __hash__(self) -> int:
        return hash((self.addr, self.bits))

    def __str__(self) -> str:
        return f"{self.addr}/{self.bits}"


def parse_ip(raw: str) -> IP:
    """netip.ParseAddr with the library's extra refusals: no zones, no IPv4-mapped IPv6, no leading zeros."""
    if "%" in raw:
        raise ValueError(f"IP address {raw!r} with zone value is not allowed")
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError(f"IP Address {raw!r} parse error during conversion from string") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f"IPv4-mapped IPv6 address {raw!r} is not allowed")
    return IP(addr)


def parse_cidr(raw: str) -> CIDR:
    """netip.ParsePrefix: ``addr/bits`` with a decimal prefix length in range; no zones, no 4-in-6."""
    addr_text, slash, bits = raw.partition("/")
    if not slash or not bits.isdigit() or (len(bits) > 1 and bits[0] == "0") or "%" in addr_text:
        raise ValueError("network address parse error during conversion from string")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ValueError("network address parse error during conversion from string") from None
    if int(bits) > addr.max_prefixlen:
        raise ValueError("network address parse error during conversion from string")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f"IPv4-mapped IPv6 address {raw!r} is not allowed")
    return CIDR(addr, int(bits))


def _accepts(parser: Callable[[str], object]) -> Callable[[Any], Any]:
    def check(raw: Any) -> Any:
        try:
            parser(str(raw))
        except ValueError:
            return celtypes.BoolType(False)
        return celtypes.BoolType(True)

    return check


def _ip(value: Any) -> Any:
    if isinstance(value, CIDR):  # cidr.ip(): the address part
        return IP(value.addr)
    return parse_ip(str(value))


def _contains_ip(cidr: CIDR, other: Any) -> Any:
    ip = other if isinstance(other, IP) else parse_ip(str(other))
    return celtypes.BoolType(ip.addr.version == cidr.addr.version and ip.addr in cidr.net)


def _contains_cidr(cidr: CIDR, other: Any) -> Any:
    sub = other if isinstance(other, CIDR) else parse_cidr(str(other))
    return celtypes.BoolType(
        sub.addr.version == cidr.addr.version and sub.bits >= cidr.bits and sub.net.network_address in cidr.net
    )


def _masked(cidr: CIDR) -> Any:
    return CIDR(cidr.net.network_address, cidr.bits)


def _ip_attr(test: Callable[[Any], bool]) -> Callable[[IP], Any]:
    return lambda ip: celtypes.BoolType(test(ip.addr))


def _link_local_multicast(addr: Any) -> bool:
    return bool(addr in ipaddress.ip_network("224.0.0.0/24" if addr.version == 4 else "ff02::/16"))


def _global_unicast(addr: Any) -> bool:  # Go's netip.Addr.IsGlobalUnicast
    special = addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local
    return not special and addr != ipaddress.ip_address("255.255.255.255")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "substring": _substring,
    "charAt": _char_at,
    "replace": _replace,
    "split": _split,
    "join": _join,
    "trim": _trim,
    "lowerAscii": _lower,
    "upperAscii": _upper,
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "find": _find,
    "findAll": _find_all,
    "isIP": _accepts(parse_ip),
    "isCIDR": _accepts(parse_cidr),
    "ip": _ip,
    "cidr": lambda raw: parse_cidr(str(raw)),
    "family": lambda ip: celtypes.IntType(ip.addr.version),
    "isUnspecified": _ip_attr(lambda a: a.is_unspecified),
    "isLoopback": _ip_attr(lambda a: a.is_loopback),
    "isLinkLocalMulticast": _ip_attr(_link_local_multicast),
    "isLinkLocalUnicast": _ip_attr(lambda a: a.is_link_local and not a.is_multicast),
    "isGlobalUnicast": _ip_attr(_global_unicast),
    "containsIP": _contains_ip,
    "containsCIDR": _contains_cidr,
    "masked": _masked,
    "prefixLength": lambda cidr: celtypes.IntType(cidr.bits),
}  # fmt: skip
# Kubernetes minor version that introduced a library function (environment/base.go); new rules may use it
# from the next minor on (the environment for new expressions is the previous version's).
INTRODUCED = {
    "isIP": 30, "isCIDR": 30, "ip": 30, "cidr": 30, "family": 30, "isUnspecified": 30, "isLoopback": 30,
    "isLinkLocalMulticast": 30, "isLinkLocalUnicast": 30, "isGlobalUnicast": 30, "containsIP": 30,
    "containsCIDR": 30, "masked": 30, "prefixLength": 30,
}  # fmt: skip

_ENV = celpy.Environment()


def compile_rule(text: str) -> Any:
    """Parse a rule; raises celpy.CELParseError on syntax errors."""
    return _ENV.compile(text)


def program(ast: Any) -> Any:
    return _ENV.program(ast, functions=FUNCTIONS)
