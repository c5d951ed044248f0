"""What the apiserver shows rather than stores: the Scale subresource, Table output and discovery."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import kmock
from kmock._internal import rendering

from tests.kube.patches import jsonpath
from tests.kube.vocab import Json, fail, human_age

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator


def scale_view(obj: Json, paths: tuple[str, str, str]) -> Json:
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


def table(emu: KubeEmulator, res: kmock.resource, items: list[Json], request: rendering.Request) -> Json:
    """Answer kubectl's ``as=Table`` the way the CRD table convertor does: Name + printer columns."""
    columns = emu._extras[res].columns or [
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
        "metadata": {"resourceVersion": str(emu._rv)},
    }


def served_groups(emu: KubeEmulator) -> dict[str, list[str]]:
    """Served versions per group, the preferred first (GA > beta > alpha, then higher numbers)."""

    def rank(v: str) -> tuple[int, int, int]:
        m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
        if not m:
            return (0, 0, 0)
        return ({"alpha": 1, "beta": 2}.get(m.group(2) or "", 3), int(m.group(1)), int(m.group(3) or 0))

    groups: dict[str, set[str]] = {}
    for res in emu._extras:
        groups.setdefault(res.group or "", set()).add(str(res.version))
    return {g: sorted(vs, key=rank, reverse=True) for g, vs in groups.items()}


def discovery(emu: KubeEmulator, path: str, request: rendering.Request) -> Json:
    groups = served_groups(emu)

    def group_doc(g: str) -> Json:
        versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
        return {"name": g, "versions": versions, "preferredVersion": versions[0]}

    if path == "/version":
        return emu._admission.version_info()
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
    for res, extras in sorted(emu._extras.items(), key=lambda i: str(i[0].plural)):
        if res.group != group or res.version != version:
            continue
        info = emu._info(res)
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
        "groupVersion": emu._gv(kmock.resource(group, version, "x")),
        "resources": resources,
    }
