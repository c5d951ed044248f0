"""DELETE as the apiserver's generic store does it, and the garbage collector of kube-controller-manager.

Why: operators wait for old objects to be gone, rely on ownerReferences for cleanup and race re-creation
against termination; an emulator that deletes everything at once, synchronously, hides those bugs.

The store (k8s.io/apiserver registry/generic/registry/store.go, registry/rest/delete.go) validates the
DeleteOptions, checks the uid/resourceVersion preconditions, gives pods their grace period, and turns the
propagation policy into the ``orphan`` / ``foregroundDeletion`` finalizers (default policy per kind and
version: Orphan for core/v1 ReplicationControllers, batch/v1 Jobs and the legacy extensions, apps/v1beta1,
apps/v1beta2 workloads; Background otherwise). An object with finalizers only gets a deletionTimestamp.

The garbage collector (pkg/controller/garbagecollector) runs asynchronously in passes: it orphans the
dependents of owners with the ``orphan`` finalizer, deletes the dependents of owners with
``foregroundDeletion`` and removes that finalizer once no ``blockOwnerDeletion`` dependent is left, and deletes
objects none of whose owners is still there (honouring the dependents' own finalizers for their policy).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import datetime
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import kmock

from tests.kube.emulator import ApiError, Json, fail, now

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
POLICIES = ("Foreground", "Background", "Orphan")
LEGACY_ORPHAN = {("", "v1", "replicationcontrollers"), ("batch", "v1", "jobs")}
DEFAULT_POD_GRACE = 30


def default_policy(res: kmock.resource) -> str:
    """The kind's DefaultGarbageCollectionPolicy for the version the request used."""
    if (res.group, res.version, res.plural) in LEGACY_ORPHAN or res.group == "extensions":
        return "Orphan"
    if res.group == "apps" and res.version in ("v1beta1", "v1beta2"):
        return "Orphan"
    return "Background"


def _invalid_options(field: str, reason: str, detail: str) -> ApiError:
    message = f'DeleteOptions.meta.k8s.io "" is invalid: {field}: {detail}'
    cause = {"reason": reason, "message": detail, "field": field}
    return fail(422, "Invalid", message, group="meta.k8s.io", kind="DeleteOptions", causes=[cause])


def validate_options(opts: Json) -> None:
    policy = opts.get("propagationPolicy")
    if opts.get("orphanDependents") is not None and policy is not None:
        detail = f'Invalid value: "{policy}": orphanDependents and deletionPropagation cannot be both set'
        raise _invalid_options("propagationPolicy", "FieldValueInvalid", detail)
    if policy is not None and policy not in POLICIES:
        supported = ", ".join(f'"{p}"' for p in (*POLICIES, "nil"))
        detail = f'Unsupported value: "{policy}": supported values: {supported}'
        raise _invalid_options("propagationPolicy", "FieldValueNotSupported", detail)


def check_preconditions(obj: Json, opts: Json) -> None:
    """rest.BeforeDelete: 409 Conflict naming the kind (GroupResource{group, Kind}) when uid or rv differ."""
    pre, meta = opts.get("preconditions") or {}, obj["metadata"]
    group = obj["apiVersion"].rpartition("/")[0]
    what = f"{obj['kind']}.{group}" if group else obj["kind"]
    checks = [
        ("uid", "UID", "The object might have been deleted and then recreated"),
        ("resourceVersion", "ResourceVersion", "The object might have been modified"),
    ]
    for key, label, hint in checks:
        if pre.get(key) is not None and pre[key] != meta.get(key):
            raise fail(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {what} "{meta["name"]}": the {label} in the precondition '
                f"({pre[key]}) does not match the {label} in record ({meta.get(key)}). {hint}",
                name=meta["name"],
                group=group,
                kind=obj["kind"],
            )


def _stamp(seconds: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _graceful(obj: Json, opts: Json) -> tuple[bool, bool]:
    """rest.BeforeDelete for pods, the one graceful kind here: (graceful, pending); updates `obj` in place."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    requested = opts.get("gracePeriodSeconds")
    if isinstance(requested, int) and requested < 0:
        requested = 1
    if meta.get("deletionTimestamp"):
        current = meta.get("deletionGracePeriodSeconds")
        if not current:
            return False, False
        if requested is None or requested >= current:
            return False, True
        moment = _parse(meta["deletionTimestamp"]) - datetime.timedelta(seconds=current - requested)
        if moment < datetime.datetime.now(datetime.UTC):
            moment, requested = datetime.datetime.now(datetime.UTC), (1 if requested else 0)
        meta.update(deletionTimestamp=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), deletionGracePeriodSeconds=requested)
        return True, False
    if obj.get("kind") != "Pod":
        return False, False
    period = requested if requested is not None else spec.get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE)
    if not spec.get("nodeName") or (obj.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
        period = 0
    meta.update(deletionTimestamp=_stamp(period), deletionGracePeriodSeconds=period)
    if meta.get("generation"):
        meta["generation"] += 1
    return True, False


def _gc_finalizers(res: kmock.resource, meta: Json, opts: Json) -> list[str]:
    """shouldOrphanDependents / shouldDeleteDependentsInForeground: options, then finalizers, then the default."""
    current = list(meta.get("finalizers") or [])
    policy = opts.get("propagationPolicy")
    if opts.get("orphanDependents") is not None:
        policy = "Orphan" if opts["orphanDependents"] else "Background"
    if policy is None:
        policy = next(
            ({ORPHAN: "Orphan", FOREGROUND: "Foreground"}[f] for f in current if f in (ORPHAN, FOREGROUND)),
            default_policy(res),
        )
    kept = [f for f in current if f not in (ORPHAN, FOREGROUND)]
    return kept + ([ORPHAN] if policy == "Orphan" else [FOREGROUND] if policy == "Foreground" else [])


def delete(emulator: KubeEmulator, res: kmock.resource, ns: str | None, name: str, opts: Json) -> Json:
    """Store.Delete: returns the object as stored (still there while finalizers or a grace period hold it)."""
    obj = emulator._must_get(res, ns, name)
    validate_options(opts)
    check_preconditions(obj, opts)
    new = copy.deepcopy(obj)
    graceful, pending = _graceful(new, opts)
    if pending:
        return obj
    meta = new["metadata"]
    finalizers = _gc_finalizers(res, meta, opts)
    if graceful or meta.get("finalizers") or set(finalizers) != set(meta.get("finalizers") or []):
        if finalizers:
            meta["finalizers"] = finalizers
        else:
            meta.pop("finalizers", None)
        if finalizers and not graceful:  # markAsDeleting
            if not meta.get("deletionTimestamp") and meta.get("generation"):
                meta["generation"] += 1
            meta.setdefault("deletionTimestamp", now())
            meta["deletionGracePeriodSeconds"] = 0
        if finalizers or (graceful and meta.get("deletionGracePeriodSeconds")):
            return new if new == obj else emulator._store(res, new, "MODIFIED", obj)
    return emulator._remove(res, new, "")


# --- the garbage collector --------------------------------------------------------------------------------


class GarbageCollector:
    """One pass over the stored objects does what the GC's workers would; the emulator schedules passes.

    A pass has work only after a deletion (an object gone or being deleted: its dependents may dangle, a
    foreground owner may be free) or a write of an object whose owner is missing, of another kind, or
    going: other passes, most of them while a fleet is being created, look at the changed objects only.
    """

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self._read_rv = 0

    def run_pass(self) -> None:
        if self._needs_full_pass():
            self._full_pass()

    def _needs_full_pass(self) -> bool:
        em, since = self.emulator, self._read_rv
        self._read_rv = em._rv
        if since == 0 or since < em._log_floor:
            return True
        for _rv, kind, _res, obj, _old in em._log[bisect.bisect_right(em._log, since, key=lambda e: e[0]) :]:
            meta = obj["metadata"]
            if kind == "DELETED" or meta.get("deletionTimestamp"):
                return True
            for ref in meta.get("ownerReferences") or []:
                owner = em._uids.get(str(ref.get("uid")))
                if (
                    owner is None
                    or owner.get("kind") != ref.get("kind")
                    or owner["metadata"].get("deletionTimestamp")
                    or owner["metadata"].get("namespace") not in (None, meta.get("namespace"))
                ):
                    return True
        return False

    def _full_pass(self) -> None:
        em = self.emulator
        objects = list(em._all())
        by_uid = {o["metadata"]["uid"]: (r, o) for r, o in objects}
        dependents: dict[str, list[tuple[kmock.resource, Json, Json]]] = defaultdict(list)
        for r, o in objects:
            for ref in o["metadata"].get("ownerReferences") or []:
                dependents[str(ref.get("uid"))].append((r, o, ref))
        for r, o in objects:
            meta = o["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            if ORPHAN in (meta.get("finalizers") or []):
                self._orphan(r, o, dependents[meta["uid"]])
            elif FOREGROUND in (meta.get("finalizers") or []):
                self._foreground(r, o, dependents[meta["uid"]], by_uid, dependents)
        for r, o in objects:
            if o["metadata"].get("ownerReferences"):
                self._attempt(r, o, by_uid, dependents)

    def _latest(self, res: kmock.resource, obj: Json) -> Json | None:
        meta = obj["metadata"]
        latest = self.emulator._get(res, meta.get("namespace"), meta["name"])
        return latest if latest is not None and latest["metadata"]["uid"] == meta["uid"] else None

    def _drop_refs(self, res: kmock.resource, obj: Json, uids: set[str]) -> None:
        latest = self._latest(res, obj)
        if latest is None:
            return
        new = copy.deepcopy(latest)
        refs = [ref for ref in latest["metadata"].get("ownerReferences") or [] if ref.get("uid") not in uids]
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        self.emulator._commit(res, latest, new, "main")

    def _drop_finalizer(self, res: kmock.resource, obj: Json, finalizer: str) -> None:
        latest = self._latest(res, obj)
        if latest is None:
            return
        new = copy.deepcopy(latest)
        new["metadata"]["finalizers"] = [f for f in latest["metadata"].get("finalizers") or [] if f != finalizer]
        self.emulator._commit(res, latest, new, "main")

    def _orphan(self, res: kmock.resource, owner: Json, deps: list[tuple[kmock.resource, Json, Json]]) -> None:
        for r, dep, _ in deps:
            self._drop_refs(r, dep, {owner["metadata"]["uid"]})
        self._drop_finalizer(res, owner, ORPHAN)

    def _foreground(
        self,
        res: kmock.resource,
        owner: Json,
        deps: list[tuple[kmock.resource, Json, Json]],
        by_uid: dict[str, tuple[kmock.resource, Json]],
        dependents: dict[str, list[tuple[kmock.resource, Json, Json]]],
    ) -> None:
        live = [(r, d, ref) for r, d, ref in deps if self._latest(r, d) is not None]
        if not any(ref.get("blockOwnerDeletion") for _, _, ref in live):
            self._drop_finalizer(res, owner, FOREGROUND)
            return
        for r, d, _ in live:
            self._attempt(r, d, by_uid, dependents)

    def _classify(self, obj: Json, by_uid: dict[str, tuple[kmock.resource, Json]]) -> tuple[list[Any], ...]:
        solid, dangling, waiting = [], [], []
        ns = obj["metadata"].get("namespace")
        for ref in obj["metadata"].get("ownerReferences") or []:
            found = by_uid.get(str(ref.get("uid")))
            owner = found[1] if found else None
            if (
                owner is None
                or self._latest(found[0], owner) is None  # type: ignore[index]
                or owner.get("kind") != ref.get("kind")
                or (owner["metadata"].get("namespace") not in (None, ns))
            ):
                dangling.append(ref)
            elif owner["metadata"].get("deletionTimestamp") and FOREGROUND in (
                owner["metadata"].get("finalizers") or []
            ):
                waiting.append(ref)
            else:
                solid.append(ref)
        return solid, dangling, waiting

    def _attempt(
        self,
        res: kmock.resource,
        obj: Json,
        by_uid: dict[str, tuple[kmock.resource, Json]],
        dependents: dict[str, list[tuple[kmock.resource, Json, Json]]],
    ) -> None:
        """attemptToDeleteItem: keep an object with a solid owner, else delete it."""
        latest = self._latest(res, obj)
        if latest is None:
            return
        meta = latest["metadata"]
        finalizers = meta.get("finalizers") or []
        if not meta.get("ownerReferences") or (meta.get("deletionTimestamp") and FOREGROUND not in finalizers):
            return
        solid, dangling, waiting = self._classify(latest, by_uid)
        if solid:
            if dangling or waiting:
                self._drop_refs(res, latest, {str(r.get("uid")) for r in dangling + waiting})
            return
        if meta.get("deletionTimestamp"):
            return  # already being deleted in the foreground: the owner pass finishes it
        if waiting and dependents.get(meta["uid"]):
            policy = "Foreground"
        else:
            policy = "Orphan" if ORPHAN in finalizers else "Foreground" if FOREGROUND in finalizers else "Background"
        opts = {"propagationPolicy": policy, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiError):  # gone or changed meanwhile: the next pass looks again
            delete(self.emulator, res, meta.get("namespace"), meta["name"], opts)
