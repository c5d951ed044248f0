"""A Kubernetes API emulator for tests, built on kmock's stateful emulator.

Stock ``kmock.KubernetesEmulator`` keeps objects as plain merged dicts, which is not enough for kopf
or kubectl. This subclass owns every object URL itself and adds what a real
API server guarantees: metadata bookkeeping, optimistic concurrency, real patch semantics, watch resumption,
subresources, finalizers, garbage collection, CRD registration, discovery and Table output, and refuses
what a 1.31 apiserver refuses on write (schemas, CEL rules and their cost, quantities, immutable fields:
see admission.py). Authentication and RBAC (``auth.py``), DELETE and the garbage collector (``deletion.py``),
a StatefulSet controller (``statefulsets.py``) and a pluggable kubelet (``kubelet.py``) hook in through
``control.py``. This class keeps the HTTP entry and the store; the request dispatch is in ``routes.py``,
create/update in ``writes.py``, watches in ``watch.py``, Scale/Table/discovery in ``views.py``, patches and
JSONPath in ``patches.py``, selectors in ``selectors.py`` and the shared vocabulary in ``vocab.py``.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import importlib.resources
import json
import math
import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import apps, parsing, rendering

from tests.kube import routes, writes
from tests.kube.admission import Admission
from tests.kube.indexes import Indexes, KeyFn
from tests.kube.patches import json_patch, merge_patch, strategic_patch
from tests.kube.selectors import Matcher, field_matcher, label_matcher
from tests.kube.views import discovery
from tests.kube.vocab import ApiError, Extras, Json, Key, fail, human_age, now, parse_route

__all__ = ["ApiError", "Json", "Key", "KubeEmulator", "fail", "human_age", "label_matcher", "now", "parse_route"]

LOG_LIMIT = 10_000  # retained watch events; older resourceVersions get 410 Expired like a compacted etcd


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
    _live: dict[kmock.resource, dict[tuple[str | None, str], Json]] = attrs.field(factory=dict, init=False)
    """Live objects by resource: a list or watch reads its own kind, not every stored object."""
    _uids: dict[str, Json] = attrs.field(factory=dict, init=False)
    """Live objects by uid: the garbage collector finds an owner without a scan."""
    _user_payloads: dict[int, tuple[Any, bool]] = attrs.field(factory=dict, init=False)
    """id(reaction) -> (the reaction, whether a test added it): see `_users`."""
    _indexes: Indexes = attrs.field(factory=Indexes, init=False)
    """Secondary indexes of live objects (see `indexed`), moved along by every `_store`."""
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
                return aiohttp.web.json_response(discovery(self, path, request))
            return await routes.serve(self, request, route)
        except kmock.KubernetesError as e:  # ApiError, and admission's StatusError
            return self._status_response(e)

    def _intercepted(self, request: rendering.Request) -> bool:
        """Whether a test's own reaction (kmock's DSL) answers this request instead of the emulator."""
        return any(self._users(p) and request in p._source for p in self._payloads)

    def _users(self, payload: Any) -> bool:
        """A reaction a test added, not one of kmock's defaults (priority -inf); reactions are frozen, so this
        is judged once per reaction (`priorities` walks the reaction's chain every time)."""
        known = self._user_payloads.get(id(payload))
        if known is None or known[0] is not payload:
            priorities = payload.priorities
            known = self._user_payloads[id(payload)] = (payload, not priorities or priorities[0] != -math.inf)
        return known[1]

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
        obj = self._live.get(res, {}).get((ns, name))
        return None if obj is None else dict(obj)  # a shallow copy, as kmock's ``.raw`` gives

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
        live = self._live.setdefault(res, {})
        uid = str(meta.get("uid") or "")
        before = live.get(key[1:])
        if event == "DELETED":
            live.pop(key[1:], None)
            self._uids.pop(uid, None)
        else:
            live[key[1:]] = body
            self._uids[uid] = body
        self._indexes.moved(res, key[1:], before, None if event == "DELETED" else body)
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
        for r in [res] if res is not None else list(self._live):
            for obj in list(self._live.get(r, {}).values()):
                yield r, dict(obj)  # a shallow copy, as kmock's ``.raw`` gives

    def indexed(self, res: kmock.resource, index: str, key: KeyFn, group: Hashable) -> list[Json]:
        """Live objects of `res` whose `key` is `group` (shallow copies, as `_all` gives), from the index named
        `index`, built on first use and kept up to date by every store: a lookup without a scan."""
        self._indexes.ensure(res, index, key, self._live.get(res, {}).items())
        return [dict(o) for o in self._indexes.lookup(res, index, group)]

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
        return writes.create(self, res, ns, body)

    def _check_rv(self, old: Json, new: Json) -> None:
        writes.check_rv(self, old, new)

    def _commit(self, res: kmock.resource, old: Json, new: Json, part: str) -> Json:
        """Store an update of the main resource or its ``status`` (see writes.commit)."""
        return writes.commit(self, res, old, new, part)

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

    # -- names --

    def _wants_table(self, request: rendering.Request) -> bool:
        return "as=Table" in self._header(request, "Accept")

    def _header(self, request: rendering.Request, name: str) -> str:
        raw = request._raw_request
        return raw.headers.get(name, "") if raw is not None else request.headers.get(name, "")

    def _register_crd(self, crd: Json) -> None:
        writes.register_crd_resources(self, crd)

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
