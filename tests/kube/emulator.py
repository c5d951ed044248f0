"""A Kubernetes API emulator for tests, built on kmock's stateful emulator.

Stock ``kmock.KubernetesEmulator`` keeps objects as plain merged dicts, which is not enough for kopf
or kubectl. This subclass owns every object URL itself and adds what a real
API server guarantees: metadata bookkeeping, optimistic concurrency, real patch semantics, watch resumption,
subresources, finalizers, garbage collection, CRD registration, discovery and Table output, and refuses
what a 1.31 apiserver refuses on write (schemas, CEL rules and their cost, quantities, immutable fields:
see admission.py). Authentication and RBAC (``auth.py``), DELETE and the garbage collector (``deletion.py``),
a StatefulSet controller (``statefulsets.py``) and a pluggable kubelet (``kubelet.py``) hook in through
``control.py``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import datetime
import gzip
import importlib.resources
import json
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import apps, parsing, rendering

from tests.kube.admission import Admission

Json = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]

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
LOG_LIMIT = 10_000  # retained watch events; older resourceVersions get 410 Expired like a compacted etcd


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
    """RFC 7386: dicts merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
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


# --- the emulator -------------------------------------------------------------------------------------------


def _default_kubelet() -> Any:
    from tests.kube.kubelet import InstantKubelet

    return InstantKubelet()


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with real API-server semantics for every object URL.

    User reactions added with kmock's DSL (``emulator['get /api/v1/pods'] << 500``) still take precedence,
    so tests can inject faults; but then the request does not change the stored state.
    """

    _rv: int = attrs.field(default=0, init=False)
    _extras: dict[kmock.resource, Extras] = attrs.field(factory=dict, init=False)
    _log: list[tuple[int, str, kmock.resource, Json, Json | None]] = attrs.field(factory=list, init=False)
    _log_floor: int = attrs.field(default=0, init=False)  # events with rv <= floor were compacted away
    _wakeup: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # The Kubernetes version served at /version; built-in schemas, messages and CEL libraries follow it.
    kubernetes_version: str = "1.31.0"
    # Validate custom resources against their CRD (schema, defaults, pruning, CEL rules), as the apiserver does.
    validate_custom_resources: bool = True
    # Strictness switches (see control.py): False lets a suite keep the older, forgiving behaviour.
    authorization: bool = True  # bearer tokens are checked (401) and non-admins authorized by RBAC (403)
    statefulset_controller: bool = True  # StatefulSets get pods, claims, revisions and status by themselves
    kubelet: Any = attrs.field(factory=lambda: _default_kubelet())  # runs bound pods; None: pods stay Pending
    owner_references_permission_enforcement: bool = False  # the admission plugin; off as in vanilla kube-apiserver
    controller_delay: float = 0.05  # seconds between a change and the GC/controller pass that reacts to it
    _control: Any = attrs.field(default=None, init=False)
    _admission: Admission = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        from tests.kube.control import Control

        self._control = Control(self)
        self._admission = Admission(self.kubernetes_version, self)
        # = resources.load_bundled(), minus its DeprecationWarning from importlib.resources.read_binary().
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))
        for key in list(self.resources):
            res, info = kmock.resource(key), self.resources[key]
            scale = (".spec.replicas", ".status.replicas", ".spec.selector") if "scale" in info.subresources else None
            self._extras[res] = Extras(kind=info.kind or "", status="status" in info.subresources, scale=scale)
        for res in self._admission.unserved(list(self._extras), lambda r: self._extras[r].kind):
            self.resources.pop(res, None)  # built-in APIs the emulated version does not have yet
            self._extras.pop(res, None)
        for name in ("default", "kube-system", "kube-public"):
            self._create(kmock.resource("", "v1", "namespaces"), None, {"metadata": {"name": name}})
        self._control.bootstrap()

    # -- public helpers for tests --

    def register_crd(self, manifest: Json) -> None:
        """Serve a CustomResourceDefinition's resources, as POSTing it to the API would."""
        crd_res = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        self._admission.begin("POST", {})  # not an HTTP request: no directive, and no warnings to carry over
        name = manifest.get("metadata", {}).get("name")
        if name and self._get(crd_res, None, name) is not None:
            self._register_crd(manifest)
        else:
            self._create(crd_res, None, copy.deepcopy(manifest))

    def close_watches(self) -> None:
        """End all watch streams so the HTTP server can stop without waiting for long-polling clients."""
        self._closing = True
        self._notify()

    @property
    def control(self) -> Any:
        """Tokens, RBAC audit and controllers: a `tests.kube.control.Control`."""
        return self._control

    @property
    def resource_version(self) -> int:
        return self._rv

    def live(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Json | None:
        """The current stored body, or None if absent/deleted."""
        return self._get(kmock.resource(resource), namespace, name)

    # -- HTTP entry --

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            parsing.parse_path(raw_request.path)
        except ValueError:  # kmock's parser fails on /api/v1/namespaces itself: skip its k8s interpretation
            body = await raw_request.read()
            request = rendering.Request(
                id=len(self._requests),
                raw_request=raw_request,
                url=raw_request.url,
                method=raw_request.method,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                cookies=dict(raw_request.cookies),
                body=body,
                text=body.decode("utf-8", "replace"),
                data=None,
            )
            self._requests.append(request)
            try:
                return await self._handle(request)
            except Exception as e:  # the same bookkeeping as kmock's own __call__: tests assert on .errors
                if self._errors:
                    self._errors[-1].append(e)
                return await self._render_error(e)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # NB: skip the stock emulator's _handle(): it mutates state before dispatching, with merge semantics.
        path = request.url.path.rstrip("/") or "/"
        route = parse_route(path)
        if self._intercepted(request):
            return await apps.RawHandler._handle(self, request)
        try:
            self._control.admit(request)
        except ApiError as e:
            return self._status_response(e)
        if (
            route is None
            and path not in ("/api", "/apis", "/version")
            and not re.fullmatch(r"/api/[^/]+|/apis/[^/]+(/[^/]+)?", path)
        ):
            return await apps.RawHandler._handle(self, request)
        try:
            if route is None or (route.resource.plural is None):
                return aiohttp.web.json_response(self._discovery(path, request))
            return await self._serve(request, route)
        except kmock.KubernetesError as e:  # ApiError, and admission's StatusError
            return self._status_response(e)

    def _intercepted(self, request: rendering.Request) -> bool:
        return any((not p.priorities or p.priorities[0] != -math.inf) and request in p._source for p in self._payloads)

    def _status_response(self, e: kmock.KubernetesError) -> aiohttp.web.Response:
        body: Json = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": e.message,
            "reason": e.reason,
            "code": e.status,
        }
        if e.details:
            body["details"] = e.details
        return aiohttp.web.json_response(body, status=e.status)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            return self._status_response(exc)
        return await super()._render_error(exc)

    async def _serve(self, request: rendering.Request, route: Route) -> aiohttp.web.StreamResponse:
        res, ns, name, sub = route.resource, route.namespace, route.name, route.sub
        info = self._info(res)
        if info is None or res not in self._extras or (ns is not None and not info.namespaced):
            raise fail(404, "NotFound", "the server could not find the requested resource")
        extras, method, params = self._extras[res], request.method.upper(), request.params
        self._admission.begin(method, params)
        if (name is None or sub is None) and method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, res, ns, name)
        if name is None:
            if method == "GET":
                items = self._list(res, ns, params)
                if self._wants_table(request):
                    return self._json(self._table(res, items, request))
                return self._json(
                    {
                        "kind": f"{extras.kind}List",
                        "apiVersion": self._gv(res),
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    }
                )
            if method == "POST":
                if info.namespaced and ns is None:
                    raise fail(405, "MethodNotAllowed", "create of a namespaced resource needs a namespace URL")
                return self._json(self._create(res, ns, self._body(request)), 201)
            if method == "DELETE":
                opts = self._body(request, optional=True)
                for obj in self._list(res, ns, params):
                    self._delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"], opts)
                return self._json(
                    {
                        "kind": f"{extras.kind}List",
                        "apiVersion": self._gv(res),
                        "items": [],
                        "metadata": {"resourceVersion": str(self._rv)},
                    }
                )
            raise fail(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if info.namespaced and ns is None:
            raise fail(404, "NotFound", "the server could not find the requested resource")
        old = self._must_get(res, ns, name)
        if sub is None:
            if method == "GET":
                return self._json(self._table(res, [old], request) if self._wants_table(request) else old)
            if method == "PUT":
                new = self._body(request)
                if new.get("metadata", {}).get("name") not in (None, name):
                    raise fail(400, "BadRequest", "the name of the object does not match the name on the URL")
                return self._json(self._commit(res, old, new, "main"))
            if method == "PATCH":
                return self._json(self._commit(res, old, self._patched(request, res, old), "main"))
            if method == "DELETE":
                return self._json(self._delete(res, ns, name, self._body(request, optional=True)))
        elif sub == "status" and extras.status:
            if method == "GET":
                return self._json(old)
            if method in ("PUT", "PATCH"):
                new = self._body(request) if method == "PUT" else self._patched(request, res, old)
                return self._json(self._commit(res, old, new, "status"))
        elif sub == "scale" and extras.scale:
            scale = self._scale(old, extras.scale)
            if method == "GET":
                return self._json(scale)
            if method in ("PUT", "PATCH"):
                new = self._body(request) if method == "PUT" else self._patched(request, res, scale)
                self._check_rv(old, new)
                replicas = jsonpath(new, ".spec.replicas")
                if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                    raise fail(422, "Invalid", f"Scale.spec.replicas: Invalid value: {replicas!r}")
                body = copy.deepcopy(old)
                set_path(body, extras.scale[0], replicas)
                return self._json(self._scale(self._commit(res, old, body, "main"), extras.scale))
        else:
            raise fail(404, "NotFound", "the server could not find the requested resource")
        raise fail(405, "MethodNotAllowed", f"{method} is not supported here")

    def _json(self, payload: Json, status: int = 200) -> aiohttp.web.Response:
        response = aiohttp.web.json_response(payload, status=status)
        for text in self._admission.take_warnings():
            response.headers.add("Warning", f"299 - {json.dumps(text)}")
        return response

    def _body(self, request: rendering.Request, optional: bool = False) -> Json:
        ctype = self._header(request, "Content-Type")
        if "protobuf" in ctype or "cbor" in ctype:
            raise fail(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
        if optional and not request.body:
            return {}
        try:
            data = json.loads(request.body)
        except ValueError as e:
            raise fail(400, "BadRequest", f"the body of the request is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
            raise fail(400, "BadRequest", "the body of the request must be a JSON object with an object metadata")
        return data

    def _patched(self, request: rendering.Request, res: kmock.resource, old: Json) -> Json:
        ctype = self._header(request, "Content-Type").split(";")[0].strip()
        try:
            patch = json.loads(request.body)
        except ValueError as e:
            raise fail(400, "BadRequest", f"the body of the request is not valid JSON: {e}") from None
        if ctype == "application/json-patch+json":
            result = json_patch(old, patch)
        elif ctype == "application/merge-patch+json":
            result = merge_patch(old, patch)
        elif ctype == "application/strategic-merge-patch+json" and not self._extras[res].custom:
            result = strategic_patch(old, patch)
        else:
            raise fail(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
        if not isinstance(result, dict) or not isinstance(result.get("metadata"), dict):
            raise fail(422, "Invalid", "the patched object must be a JSON object with metadata")
        return result

    # -- storage --

    def _get(self, res: kmock.resource, ns: str | None, name: str) -> Json | None:
        key = (res, ns, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    def _must_get(self, res: kmock.resource, ns: str | None, name: str) -> Json:
        obj = self._get(res, ns, name)
        if obj is None:
            raise fail(
                404, "NotFound", f'{self._what(res)} "{name}" not found', name=name, group=res.group, kind=res.plural
            )
        return obj

    def _store(self, res: kmock.resource, body: Json, event: str, old: Json | None) -> Json:
        self._rv += 1
        meta = body["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (res, meta.get("namespace"), meta["name"])
        if key not in self._objects:
            self._objects[key] = body
        elif event == "DELETED":
            self._objects[key].delete()
        else:
            self._objects[key].history.append(body)
        self._log.append((self._rv, event, res, body, old))
        if len(self._log) > LOG_LIMIT:
            self._log_floor = self._log[LOG_LIMIT // 10][0]
            del self._log[: LOG_LIMIT // 10 + 1]
        self._notify()
        return body

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        if self._control is not None:
            self._control.poke()

    def _all(self, res: kmock.resource | None = None) -> Iterable[tuple[kmock.resource, Json]]:
        for (r, _, _), obj in list(self._objects.items()):
            if (res is None or r == res) and not obj.deleted:
                yield r, obj.raw

    def _list(self, res: kmock.resource, ns: str | None, params: Mapping[str, str]) -> list[Json]:
        match = self._matcher(params, ns, None)
        items = [o for _, o in self._all(res) if match(o)]
        return sorted(items, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def _matcher(self, params: Mapping[str, str], ns: str | None, name: str | None) -> Matcher:
        labels = label_matcher(params.get("labelSelector", ""))
        fields = field_matcher(params.get("fieldSelector", ""))
        return lambda o: (
            labels(o)
            and fields(o)
            and (ns is None or o["metadata"].get("namespace") == ns)
            and (name is None or o["metadata"].get("name") == name)
        )

    # -- verbs --

    def _create(self, res: kmock.resource, ns: str | None, body: Json) -> Json:
        info, extras = self._info(res), self._extras[res]
        assert info is not None
        meta = body.setdefault("metadata", {})
        if info.namespaced:
            if ns is not None and meta.get("namespace") not in (None, ns):
                raise fail(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = ns or meta.get("namespace")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = meta.get("name")
        rbac = res.group == "rbac.authorization.k8s.io"  # RBAC names are path segments ("system:discovery")
        if not isinstance(name, str) or not (
            re.fullmatch(r"[^/%]+", name) and name not in (".", "..")
            if rbac
            else re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)
        ):
            raise fail(
                422,
                "Invalid",
                f"{extras.kind}.metadata.name: Invalid value: {name!r}: name or generateName "
                "is required and must be a lowercase RFC 1123 subdomain",
                kind=extras.kind,
            )
        existing = self._get(res, meta.get("namespace"), name)
        if existing is not None:
            raise fail(
                409,
                "AlreadyExists",
                ("object is being deleted: " if existing["metadata"].get("deletionTimestamp") else "")
                + f'{self._what(res)} "{name}" already exists',
                name=name,
                group=res.group,
                kind=res.plural,
            )
        body["apiVersion"], body["kind"] = self._gv(res), extras.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(key, None)
        if extras.custom or "spec" in body:
            meta["generation"] = 1
        if extras.status:
            body.pop("status", None)
        if extras.kind == "Namespace":
            body["status"] = {"phase": "Active"}
        body = self._admission.admit(res, extras.kind, extras.custom, None, body)
        if extras.kind == "CustomResourceDefinition":
            self._register_crd(body)
            body["status"] = {
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now()} for t in ("NamesAccepted", "Established")
                ],
                "acceptedNames": body.get("spec", {}).get("names", {}),
                "storedVersions": [v["name"] for v in body["spec"]["versions"] if v.get("storage")],
            }
        return self._store(res, body, "ADDED", None)

    def _check_rv(self, old: Json, new: Json) -> None:
        rv = new.get("metadata", {}).get("resourceVersion")
        if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
            name = old["metadata"]["name"]
            raise fail(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self._what_obj(old)} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try "
                "again",
                name=name,
                kind=old.get("kind"),
            )

    def _commit(self, res: kmock.resource, old: Json, new: Json, part: str) -> Json:
        """Store an update of the main resource or its ``status``: keep what the API owns, bump what it counts."""
        extras = self._extras[res]
        self._check_rv(old, new)
        if not isinstance(new.get("metadata", {}), dict):
            raise fail(422, "Invalid", "metadata must be an object")
        if part == "status":
            result = copy.deepcopy(old)
            if new.get("status") is None:
                result.pop("status", None)
            else:
                result["status"] = new["status"]
        else:
            result = copy.deepcopy(new)
            meta, old_meta = result.setdefault("metadata", {}), old["metadata"]
            for key in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "deletionGracePeriodSeconds",
            ):
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
            if extras.status:
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
            if "deletionTimestamp" in old_meta and set(meta.get("finalizers") or []) - set(
                old_meta.get("finalizers") or []
            ):
                raise fail(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                )

            def spec(o: Json) -> Json:
                return {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}

            if "generation" in meta and spec(result) != spec(old):
                meta["generation"] += 1
        result = self._admission.admit(res, extras.kind, extras.custom, old, result)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if result == old:
            return old  # no-op updates neither bump resourceVersion nor emit watch events
        if extras.kind == "CustomResourceDefinition":
            self._register_crd(result)
        self._store(res, result, "MODIFIED", old)
        meta = result["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
            self._remove(res, result, "Background")
        return result

    def _delete(self, res: kmock.resource, ns: str | None, name: str, opts: Json) -> Json:
        from tests.kube.deletion import delete

        return delete(self, res, ns, name, opts)

    def _remove(self, res: kmock.resource, obj: Json, policy: str) -> Json:
        """Really delete, then do what the namespace and CRD controllers would (dependents: the GC, later)."""
        gone = self._store(res, copy.deepcopy(obj), "DELETED", obj)
        kind, meta = self._extras[res].kind, obj["metadata"]
        if kind == "Namespace":
            for r, o in list(self._all()):
                if o["metadata"].get("namespace") == meta["name"] and self._get(r, meta["name"], o["metadata"]["name"]):
                    self._delete(r, meta["name"], o["metadata"]["name"], {})
        if kind == "CustomResourceDefinition":
            for version in obj.get("spec", {}).get("versions", []):
                r = kmock.resource(obj["spec"]["group"], version["name"], obj["spec"]["names"]["plural"])
                for _, o in list(self._all(r)):
                    self._remove(r, o, "Background")
                self.resources.pop(r, None)
                self._extras.pop(r, None)
        return gone

    # -- watch --

    async def _watch(
        self, request: rendering.Request, res: kmock.resource, ns: str | None, name: str | None
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        match = self._matcher(params, ns, name)
        since_text = params.get("resourceVersion") or "0"
        try:
            since = int(since_text)
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else math.inf
        except ValueError:
            raise fail(400, "BadRequest", f"invalid resourceVersion or timeoutSeconds: {since_text!r}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        try:
            async for event in self._events(res, match, since, deadline):
                await response.write(json.dumps(event).encode() + b"\n")
            if params.get("allowWatchBookmarks") in ("true", "1") and not self._closing:
                bookmark = {
                    "kind": self._extras[res].kind,
                    "apiVersion": self._gv(res),
                    "metadata": {"resourceVersion": str(self._rv)},
                }
                await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to report to anyone
        return response

    async def _events(self, res: kmock.resource, match: Matcher, since: int, deadline: float) -> AsyncIterator[Json]:
        """Yield changes after ``since``; with 0, first the existing objects as ADDED (real list-then-watch)."""
        if since == 0:
            since = self._rv
            for obj in sorted(
                (o for _, o in self._all(res) if match(o)), key=lambda o: int(o["metadata"]["resourceVersion"])
            ):
                yield {"type": "ADDED", "object": obj}
        elif since < self._log_floor:
            yield {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "reason": "Expired",
                    "code": 410,
                    "message": f"too old resource version: {since} ({self._log_floor})",
                },
            }
            return
        loop = asyncio.get_running_loop()
        while not self._closing:
            wakeup = self._wakeup
            for rv, kind, r, obj, old in self._log[bisect.bisect_right(self._log, since, key=lambda e: e[0]) :]:
                since = rv
                if r != res:
                    continue
                was, now_ = old is not None and match(old), kind != "DELETED" and match(obj)
                if kind == "DELETED":
                    event = "DELETED" if was else None
                else:
                    event = ("MODIFIED" if was else "ADDED") if now_ else ("DELETED" if was else None)
                if event:
                    yield {"type": event, "object": obj}
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=min(remaining, 1.0))

    # -- subresources, tables, discovery --

    def _scale(self, obj: Json, paths: tuple[str, str, str]) -> Json:
        selector = jsonpath(obj, paths[2])
        if isinstance(selector, dict):  # built-in kinds keep a LabelSelector; Scale reports it as a string
            selector = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
        meta = {
            k: obj["metadata"][k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in obj["metadata"]
        }
        status: Json = {"replicas": jsonpath(obj, paths[1]) or 0}
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": meta,
            "spec": {"replicas": jsonpath(obj, paths[0]) or 0},
            "status": status,
        }

    def _wants_table(self, request: rendering.Request) -> bool:
        return "as=Table" in self._header(request, "Accept")

    def _header(self, request: rendering.Request, name: str) -> str:
        raw = request._raw_request
        return raw.headers.get(name, "") if raw is not None else request.headers.get(name, "")

    def _table(self, res: kmock.resource, items: list[Json], request: rendering.Request) -> Json:
        """Answer kubectl's ``as=Table`` the way the CRD table convertor does: Name + printer columns."""
        columns = self._extras[res].columns or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Age"}
        ]
        defs = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        defs += [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        include = request.params.get("includeObject", "Metadata")
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for c in columns:
                value = jsonpath(obj, c["jsonPath"])
                cells.append(human_age(value) if c.get("type") == "date" and value is not None else value)
            row: Json = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "columnDefinitions": defs,
            "rows": rows,
            "metadata": {"resourceVersion": str(self._rv)},
        }

    def _register_crd(self, crd: Json) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        if not spec.get("group") or not names.get("plural") or not names.get("kind") or not spec.get("versions"):
            raise fail(
                422, "Invalid", "CustomResourceDefinition needs spec.group, spec.names.plural/kind and spec.versions"
            )
        self._admission.register_crd(crd)
        for version in spec["versions"]:
            res = kmock.resource(spec["group"], version["name"], names["plural"])
            if not version.get("served", True):
                self.resources.pop(res, None)
                self._extras.pop(res, None)
                continue
            subs = version.get("subresources") or spec.get("subresources") or {}
            scale = subs.get("scale")
            self.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=set(subs),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
            )
            self._extras[res] = Extras(
                kind=names["kind"],
                status="status" in subs,
                custom=True,
                columns=version.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns") or [],
                scale=(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath", ""))
                if scale
                else None,
            )

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo | None:
        if res not in self.resources:  # NB: not .get(): its Mapping typing widens the value to a union
            return None
        return self.resources[res]

    def _gv(self, res: kmock.resource) -> str:
        return f"{res.group}/{res.version}" if res.group else str(res.version)

    def _what(self, res: kmock.resource) -> str:
        return f"{res.plural}.{res.group}" if res.group else str(res.plural)

    def _what_obj(self, obj: Json) -> str:
        gv = obj.get("apiVersion", "")
        plural = next(
            (r.plural for r, e in self._extras.items() if e.kind == obj.get("kind") and self._gv(r) == gv),
            obj.get("kind", "").lower(),
        )
        return f"{plural}.{gv.rsplit('/', 1)[0]}" if "/" in gv else str(plural)

    def _groups(self) -> dict[str, list[str]]:
        """Served versions per group, the preferred first (GA > beta > alpha, then higher numbers)."""

        def rank(v: str) -> tuple[int, int, int]:
            m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
            if not m:
                return (0, 0, 0)
            return ({"alpha": 1, "beta": 2}.get(m.group(2) or "", 3), int(m.group(1)), int(m.group(3) or 0))

        groups: dict[str, set[str]] = {}
        for res in self._extras:
            groups.setdefault(res.group or "", set()).add(str(res.version))
        return {g: sorted(vs, key=rank, reverse=True) for g, vs in groups.items()}

    def _discovery(self, path: str, request: rendering.Request) -> Json:
        groups = self._groups()

        def group_doc(g: str) -> Json:
            versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
            return {"name": g, "versions": versions, "preferredVersion": versions[0]}

        if path == "/version":
            return self._admission.version_info()
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{request.url.host}:{request.url.port}"}
                ],
            }
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in sorted(groups) if g]}
        parts = path.strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2] if len(parts) > 2 else None)
        if group not in groups or (version is not None and version not in groups[group]):
            raise fail(404, "NotFound", "the server could not find the requested resource")
        if version is None:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(group)}
        resources: list[Json] = []
        for res, extras in sorted(self._extras.items(), key=lambda i: str(i[0].plural)):
            if res.group != group or res.version != version:
                continue
            info = self._info(res)
            assert info is not None
            resources.append(
                {
                    "name": res.plural,
                    "singularName": info.singular or "",
                    "kind": extras.kind,
                    "namespaced": bool(info.namespaced),
                    "verbs": sorted(info.verbs),
                    "shortNames": sorted(info.shortnames),
                    "categories": sorted(info.categories),
                }
            )
            for sub in sorted(info.subresources):
                entry = {
                    "name": f"{res.plural}/{sub}",
                    "singularName": "",
                    "namespaced": bool(info.namespaced),
                    "kind": extras.kind,
                    "verbs": ["get", "patch", "update"],
                }
                if sub == "scale":
                    entry.update(kind="Scale", group="autoscaling", version="v1")
                resources.append(entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": self._gv(kmock.resource(group, version, "x")),
            "resources": resources,
        }
