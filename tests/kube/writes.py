"""Create and update as the apiserver does them: names, uids, generations, optimistic concurrency, CRD serving."""

from __future__ import annotations

import copy
import random
import re
import uuid
from typing import TYPE_CHECKING

import kmock

from tests.kube.vocab import Extras, Json, fail, now

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator


def create(emu: KubeEmulator, res: kmock.resource, ns: str | None, body: Json) -> Json:
    info, extras = emu._info(res), emu._extras[res]
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
    existing = emu._get(res, meta.get("namespace"), name)
    if existing is not None:
        raise fail(
            409,
            "AlreadyExists",
            ("object is being deleted: " if existing["metadata"].get("deletionTimestamp") else "")
            + f'{emu._what(res)} "{name}" already exists',
            name=name,
            group=res.group,
            kind=res.plural,
        )
    body["apiVersion"], body["kind"] = emu._gv(res), extras.kind
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
    for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
        meta.pop(key, None)
    if extras.custom or "spec" in body:
        meta["generation"] = 1
    if extras.status:
        body.pop("status", None)
    if extras.kind == "Namespace":
        body["status"] = {"phase": "Active"}
    body = emu._admission.admit(res, extras.kind, extras.custom, None, body)
    if extras.kind == "CustomResourceDefinition":
        register_crd_resources(emu, body)
        body["status"] = {
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now()} for t in ("NamesAccepted", "Established")
            ],
            "acceptedNames": body.get("spec", {}).get("names", {}),
            "storedVersions": [v["name"] for v in body["spec"]["versions"] if v.get("storage")],
        }
    return emu._store(res, body, "ADDED", None)


def check_rv(emu: KubeEmulator, old: Json, new: Json) -> None:
    rv = new.get("metadata", {}).get("resourceVersion")
    if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
        name = old["metadata"]["name"]
        raise fail(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {emu._what_obj(old)} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try "
            "again",
            name=name,
            kind=old.get("kind"),
        )


def commit(emu: KubeEmulator, res: kmock.resource, old: Json, new: Json, part: str) -> Json:
    """Store an update of the main resource or its ``status``: keep what the API owns, bump what it counts."""
    extras = emu._extras[res]
    check_rv(emu, old, new)
    if not isinstance(new.get("metadata", {}), dict):
        raise fail(422, "Invalid", "metadata must be an object")
    if part == "status":  # the rest is the stored object's: shared, not copied (stored bodies never change)
        result = {**old, "metadata": copy.deepcopy(old["metadata"])}
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
    result = emu._admission.admit(res, extras.kind, extras.custom, old, result, status_only=part == "status")
    result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
    if result == old:
        return old  # no-op updates neither bump resourceVersion nor emit watch events
    if extras.kind == "CustomResourceDefinition":
        register_crd_resources(emu, result)
    emu._store(res, result, "MODIFIED", old)
    meta = result["metadata"]
    if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
        emu._remove(res, result, "Background")
    return result


def register_crd_resources(emu: KubeEmulator, crd: Json) -> None:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    if not spec.get("group") or not names.get("plural") or not names.get("kind") or not spec.get("versions"):
        raise fail(
            422, "Invalid", "CustomResourceDefinition needs spec.group, spec.names.plural/kind and spec.versions"
        )
    emu._admission.register_crd(crd)
    for version in spec["versions"]:
        res = kmock.resource(spec["group"], version["name"], names["plural"])
        if not version.get("served", True):
            emu.resources.pop(res, None)
            emu._extras.pop(res, None)
            continue
        subs = version.get("subresources") or spec.get("subresources") or {}
        scale = subs.get("scale")
        emu.resources[res] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            shortnames=names.get("shortNames", []),
            categories=names.get("categories", []),
            subresources=set(subs),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
        )
        emu._extras[res] = Extras(
            kind=names["kind"],
            status="status" in subs,
            custom=True,
            columns=version.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns") or [],
            scale=(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath", ""))
            if scale
            else None,
        )
