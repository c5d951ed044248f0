"""The emulator's vocabulary: API errors, resource bookkeeping records, routes and timestamps."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import kmock

Json = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]


class ApiError(kmock.KubernetesError):
    """A Kubernetes ``Status`` failure; raised by handlers, rendered without tracebacks."""


def fail(code: int, reason: str, message: str, **details: Any) -> ApiError:
    return ApiError(status=code, reason=reason, message=message, details=details or None)


@dataclass
class Extras:
    """What kmock's ResourceInfo lacks but the API semantics need."""

    kind: str
    status: bool = False
    scale: tuple[str, str, str] | None = None  # spec/status replicas paths, label selector path
    columns: list[Json] = field(default_factory=list)
    custom: bool = False


@dataclass(frozen=True)
class Route:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    sub: str | None


def parse_route(path: str) -> Route | None:
    """Split an object/collection URL; kmock's own parser loses ``/api/v1/namespaces`` itself."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    ns_sub = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not ns_sub:
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    return Route(kmock.resource(group, version, rest[0]), namespace, name, "/".join(rest[2:]) or None)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(stamp: Any) -> str:
    """Format like apimachinery's HumanDuration, as a real server fills ``date`` columns."""
    try:
        then = datetime.datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<unknown>"
    s = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    return f"{d}d{h % 24}h" if d < 8 and h % 24 else f"{d}d"
