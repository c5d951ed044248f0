"""One object or collection request served: list, create, get, update, patch, delete, status and scale."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import aiohttp.web
from kmock._internal import rendering

from tests.kube.patches import jsonpath, set_path
from tests.kube.views import scale_view, table
from tests.kube.vocab import Route, fail
from tests.kube.watch import watch

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator


async def serve(emu: KubeEmulator, request: rendering.Request, route: Route) -> aiohttp.web.StreamResponse:
    res, ns, name, sub = route.resource, route.namespace, route.name, route.sub
    info = emu._info(res)
    if info is None or res not in emu._extras or (ns is not None and not info.namespaced):
        raise fail(404, "NotFound", "the server could not find the requested resource")
    extras, method, params = emu._extras[res], request.method.upper(), request.params
    emu._admission.begin(method, params)
    if (name is None or sub is None) and method == "GET" and params.get("watch") in ("true", "1"):
        return await watch(emu, request, res, ns, name)
    if name is None:
        if method == "GET":
            items = emu._list(res, ns, params)
            if emu._wants_table(request):
                return emu._json(table(emu, res, items, request))
            return emu._json(
                {
                    "kind": f"{extras.kind}List",
                    "apiVersion": emu._gv(res),
                    "metadata": {"resourceVersion": str(emu._rv)},
                    "items": items,
                }
            )
        if method == "POST":
            if info.namespaced and ns is None:
                raise fail(405, "MethodNotAllowed", "create of a namespaced resource needs a namespace URL")
            return emu._json(emu._create(res, ns, emu._body(request)), 201)
        if method == "DELETE":
            opts = emu._body(request, optional=True)
            for obj in emu._list(res, ns, params):
                emu._delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"], opts)
            return emu._json(
                {
                    "kind": f"{extras.kind}List",
                    "apiVersion": emu._gv(res),
                    "items": [],
                    "metadata": {"resourceVersion": str(emu._rv)},
                }
            )
        raise fail(405, "MethodNotAllowed", f"{method} is not supported on a collection")
    if info.namespaced and ns is None:
        raise fail(404, "NotFound", "the server could not find the requested resource")
    old = emu._must_get(res, ns, name)
    if sub is None:
        if method == "GET":
            return emu._json(table(emu, res, [old], request) if emu._wants_table(request) else old)
        if method == "PUT":
            new = emu._body(request)
            if new.get("metadata", {}).get("name") not in (None, name):
                raise fail(400, "BadRequest", "the name of the object does not match the name on the URL")
            return emu._json(emu._commit(res, old, new, "main"))
        if method == "PATCH":
            return emu._json(emu._commit(res, old, emu._patched(request, res, old), "main"))
        if method == "DELETE":
            return emu._json(emu._delete(res, ns, name, emu._body(request, optional=True)))
    elif sub == "status" and extras.status:
        if method == "GET":
            return emu._json(old)
        if method in ("PUT", "PATCH"):
            new = emu._body(request) if method == "PUT" else emu._patched(request, res, old)
            return emu._json(emu._commit(res, old, new, "status"))
    elif sub == "scale" and extras.scale:
        scale = scale_view(old, extras.scale)
        if method == "GET":
            return emu._json(scale)
        if method in ("PUT", "PATCH"):
            new = emu._body(request) if method == "PUT" else emu._patched(request, res, scale)
            emu._check_rv(old, new)
            replicas = jsonpath(new, ".spec.replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise fail(422, "Invalid", f"Scale.spec.replicas: Invalid value: {replicas!r}")
            body = copy.deepcopy(old)
            set_path(body, extras.scale[0], replicas)
            return emu._json(scale_view(emu._commit(res, old, body, "main"), extras.scale))
    else:
        raise fail(404, "NotFound", "the server could not find the requested resource")
    raise fail(405, "MethodNotAllowed", f"{method} is not supported here")
