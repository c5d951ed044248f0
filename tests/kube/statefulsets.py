"""A small StatefulSet controller, after pkg/controller/statefulset of kube-controller-manager.

Why: an operator that owns StatefulSets reads their status (readyReplicas, revisions, observedGeneration)
and their pods and claims; a test that writes that status by hand tests only what its author believed.

Per StatefulSet, in passes the emulator schedules after each change: ControllerRevisions ``<name>-<hash>``
of the pod template (updateRevision = the current template's); pods ``<name>-<ordinal>`` with the template's
labels plus ``controller-revision-hash``, ``statefulset.kubernetes.io/pod-name``,
``apps.kubernetes.io/pod-index``, a controller ownerReference, ``hostname``/``subdomain``; claims
``<claim>-<name>-<ordinal>`` from ``volumeClaimTemplates``, owned per ``persistentVolumeClaimRetentionPolicy``
(default Retain/Retain: not owned, so they outlive pods and the set); OrderedReady creates one pod at a time
in ordinal order once the previous ones are Ready, and removes one at a time from the highest ordinal;
Parallel does all at once; RollingUpdate replaces pods from the highest ordinal down to ``partition``, one
at a time, each once its successor is Ready; OnDelete waits for pods to be deleted. Orphan pods named like
the set's and matching its selector are adopted. Nothing is done for a set that is being deleted.

Like the real controller, a pass syncs only the sets whose object, pods, revisions or claims changed since the
previous pass (from the emulator's event log), so a thousand idle sets cost nothing; every set is synced on
the first pass and whenever the log was compacted past what the controller had read.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import re
from typing import TYPE_CHECKING

import kmock

from tests.kube.deletion import delete
from tests.kube.emulator import ApiError, Json, label_matcher
from tests.kube.kubelet import PODS, is_ready

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

STS = kmock.resource("apps", "v1", "statefulsets")
REVISIONS = kmock.resource("apps", "v1", "controllerrevisions")
CLAIMS = kmock.resource("", "v1", "persistentvolumeclaims")
REVISION_LABEL = "controller-revision-hash"
SAFE = "bcdfghjklmnpqrstvwxz2456789"


def selector_text(selector: Json | None) -> str:
    """A LabelSelector as a selector string (matchLabels and matchExpressions)."""
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), ",".join(expr.get("values") or [])
        forms = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}
        terms.append(forms.get(op, f"!{key}"))
    return ",".join(terms)


def owner_ref(owner: Json, controller: bool = True) -> Json:
    meta = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"]}
    return {**ref, "controller": True, "blockOwnerDeletion": True} if controller else ref


def controller_uid(obj: Json) -> str | None:
    return next((r.get("uid") for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


ORDINAL_NAME = re.compile(r"(.+)-(\d+)")
"""``<stem>-<ordinal>``: a set's pod is ``<set>-<n>``, its claim ``<volume>-<set>-<n>`` (the stem ends at the
last dash, since an ordinal has none)."""


def pod_set_name(pod: Json) -> tuple[str | None, str] | None:
    """(namespace, set name) a pod's name would make it a pod of, or None (the index of `_pods`)."""
    meta = pod["metadata"]
    found = ORDINAL_NAME.fullmatch(meta["name"])
    return None if found is None else (meta.get("namespace"), found.group(1))


def template_hash(template: Json) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE[b % len(SAFE)] for b in digest[:10])


class StatefulSetController:
    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self._read_rv = 0
        """The emulator's resourceVersion when the last pass began: later events make sets dirty."""
        self._retry: set[tuple[str | None, str]] = set()
        """Sets whose sync failed on a conflict: synced again in the next pass."""

    def run_pass(self) -> None:
        dirty = self._dirty()
        if dirty is not None:
            dirty |= self._retry
        self._retry = set()
        live = self.emulator._live.get(STS, {})
        for key in [k for k in live if dirty is None or k in dirty]:  # the store's order, as a full scan's
            sts = self.emulator._get(STS, *key)
            if sts is not None and not sts["metadata"].get("deletionTimestamp"):
                try:
                    self.sync(sts)
                except ApiError:  # a conflict with another writer: the next pass starts anew
                    self._retry.add(key)
        if self._retry:
            self.emulator._notify()  # schedules that pass

    def _dirty(self) -> set[tuple[str | None, str]] | None:
        """The sets an event since the last pass may concern; None: all of them (first pass, compacted log)."""
        em, since = self.emulator, self._read_rv
        self._read_rv = em._rv
        if since == 0 or since < em._log_floor:
            return None
        dirty: set[tuple[str | None, str]] = set()
        for _rv, _kind, res, obj, old in em._log[bisect.bisect_right(em._log, since, key=lambda e: e[0]) :]:
            meta = obj["metadata"]
            if res == STS:
                dirty.add((meta.get("namespace"), meta["name"]))
                continue
            if res not in (PODS, REVISIONS, CLAIMS):
                continue
            refs = [
                *(meta.get("ownerReferences") or []),
                *((old or {}).get("metadata", {}).get("ownerReferences") or []),
            ]
            if not refs:  # an orphan named like a set's pod or claim may be adopted or recreated by that set
                dirty.update(self._named_in(res, meta.get("namespace"), meta["name"]))
            for ref in refs:
                owner = em._uids.get(str(ref.get("uid")))
                if owner is not None and owner.get("kind") == "Pod":  # a claim owned by its pod (whenScaled: Delete)
                    owner = em._uids.get(str(controller_uid(owner)))
                if owner is not None and owner.get("kind") == "StatefulSet" and owner.get("apiVersion") == "apps/v1":
                    dirty.add((owner["metadata"].get("namespace"), owner["metadata"]["name"]))
        return dirty

    def _named_in(self, res: kmock.resource, namespace: str | None, name: str) -> list[tuple[str | None, str]]:
        """The sets an ownerless object may concern: a pod ``<set>-<n>``'s set, a claim ``<volume>-<set>-<n>``'s
        (every set whose name ends the stem), or for a revision every set of the namespace."""
        live = self.emulator._live.get(STS, {})
        if res == REVISIONS:
            return [key for key in live if key[0] == namespace]
        found = ORDINAL_NAME.fullmatch(name)
        if found is None:
            return []  # no set's pod or claim is named like this
        stem = found.group(1)
        candidates = [stem, *(stem[i + 1 :] for i, c in enumerate(stem) if c == "-")]
        return [(namespace, c) for c in candidates if (namespace, c) in live]

    # -- revisions --

    def _revision(self, sts: Json) -> str:
        """The ControllerRevision of the current template (created if new); its name is the updateRevision."""
        meta, template = sts["metadata"], (sts.get("spec") or {}).get("template") or {}
        name = f"{meta['name']}-{template_hash(template)}"
        owned = self.emulator.indexed(REVISIONS, "controller", controller_uid, meta["uid"])
        if not any(r["metadata"]["name"] == name for r in owned):
            labels = {**(template.get("metadata") or {}).get("labels", {}), REVISION_LABEL: name}
            body = {
                "metadata": {"name": name, "labels": labels, "ownerReferences": [owner_ref(sts)]},
                "data": {"spec": {"template": {**copy.deepcopy(template), "$patch": "replace"}}},
                "revision": 1 + max((int(r.get("revision", 0)) for r in owned), default=0),
            }
            self.emulator._create(REVISIONS, meta["namespace"], body)
        return name

    def _template_of(self, sts: Json, revision: str) -> Json:
        found = self.emulator._get(REVISIONS, sts["metadata"]["namespace"], revision)
        if found is None:
            return copy.deepcopy((sts.get("spec") or {}).get("template") or {})
        template: Json = copy.deepcopy(found["data"]["spec"]["template"])
        template.pop("$patch", None)
        return template

    # -- pods and claims --

    def _pods(self, sts: Json) -> dict[int, Json]:
        meta, ns = sts["metadata"], sts["metadata"]["namespace"]
        match = label_matcher(selector_text((sts.get("spec") or {}).get("selector")))
        pods: dict[int, Json] = {}
        for pod in self.emulator.indexed(PODS, "set-name", pod_set_name, (ns, meta["name"])):
            m = ORDINAL_NAME.fullmatch(pod["metadata"]["name"])
            assert m is not None  # the index holds only pods named <set>-<ordinal>
            owner = controller_uid(pod)
            if owner is None and match(pod) and not pod["metadata"].get("deletionTimestamp"):
                adopted = copy.deepcopy(pod)
                adopted["metadata"]["ownerReferences"] = [
                    *(pod["metadata"].get("ownerReferences") or []),
                    owner_ref(sts),
                ]
                pod, owner = self.emulator._commit(PODS, pod, adopted, "main"), meta["uid"]
            if owner == meta["uid"]:
                pods[int(m.group(2))] = pod
        return pods

    def _claims(self, sts: Json, ordinal: int, pod: Json | None, scaled_away: bool) -> list[tuple[str, str]]:
        """Create missing claims for `ordinal`; set their owners per the retention policy. (volume, claim) pairs."""
        spec, meta = sts.get("spec") or {}, sts["metadata"]
        policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        out = []
        for template in spec.get("volumeClaimTemplates") or []:
            volume = template["metadata"]["name"]
            name = f"{volume}-{meta['name']}-{ordinal}"
            # updateClaimOwnerRefForSetAndPod: a condemned claim (whenScaled: Delete) is its pod's alone
            if scaled_away and policy.get("whenScaled") == "Delete" and pod is not None:
                owners = [owner_ref(pod, controller=False)]
            else:
                owners = [owner_ref(sts, controller=False)] if policy.get("whenDeleted") == "Delete" else []
            claim = self.emulator._get(CLAIMS, meta["namespace"], name)
            if claim is None and not scaled_away:
                labels = {**(template["metadata"].get("labels") or {})}
                labels.update((spec.get("selector") or {}).get("matchLabels") or {})
                body = {
                    "metadata": {"name": name, "labels": labels, **({"ownerReferences": owners} if owners else {})},
                    "spec": copy.deepcopy(template.get("spec") or {}),
                }
                created = self.emulator._create(CLAIMS, meta["namespace"], body)
                self._bind_claim(created)
            elif claim is not None and not claim["metadata"].get("deletionTimestamp"):
                ours = {meta["uid"], *([pod["metadata"]["uid"]] if pod is not None else [])}
                refs = claim["metadata"].get("ownerReferences") or []
                wanted = [r for r in refs if r.get("uid") not in ours] + owners
                if {r.get("uid") for r in wanted} != {r.get("uid") for r in refs}:
                    new = copy.deepcopy(claim)
                    new["metadata"]["ownerReferences"] = wanted
                    self.emulator._commit(CLAIMS, claim, new, "main")
            out.append((volume, name))
        return out

    def _bind_claim(self, claim: Json) -> None:
        """What a dynamic provisioner and the PV controller would do: the claim is Bound at once."""
        spec = claim.get("spec") or {}
        status = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
        }
        self.emulator._commit(CLAIMS, claim, {**claim, "status": status}, "status")

    def _new_pod(self, sts: Json, ordinal: int, revision: str) -> None:
        meta, spec = sts["metadata"], sts.get("spec") or {}
        template = self._template_of(sts, revision)
        tmeta = template.get("metadata") or {}
        name = f"{meta['name']}-{ordinal}"
        labels = {
            **(tmeta.get("labels") or {}),
            REVISION_LABEL: revision,
            "statefulset.kubernetes.io/pod-name": name,
            "apps.kubernetes.io/pod-index": str(ordinal),
        }
        pod_spec = copy.deepcopy(template.get("spec") or {})
        pod_spec["hostname"] = name
        if spec.get("serviceName"):
            pod_spec["subdomain"] = spec["serviceName"]
        volumes = [v for v in pod_spec.get("volumes") or []]
        for volume, claim in self._claims(sts, ordinal, None, scaled_away=False):
            volumes = [v for v in volumes if v.get("name") != volume]
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        if volumes:
            pod_spec["volumes"] = volumes
        body: Json = {
            "metadata": {
                "name": name,
                "labels": labels,
                "ownerReferences": [owner_ref(sts)],
                **({"annotations": copy.deepcopy(tmeta["annotations"])} if tmeta.get("annotations") else {}),
            },
            "spec": pod_spec,
        }
        self.emulator._create(PODS, meta["namespace"], body)

    def _delete_pod(self, pod: Json) -> None:
        meta = pod["metadata"]
        delete(self.emulator, PODS, meta["namespace"], meta["name"], {"preconditions": {"uid": meta["uid"]}})

    # -- the sync --

    def sync(self, sts: Json) -> None:
        spec, status = sts.get("spec") or {}, sts.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        parallel = spec.get("podManagementPolicy") == "Parallel"
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0) if rolling else 0
        update_rev = self._revision(sts)
        current_rev = status.get("currentRevision") or update_rev
        pods = self._pods(sts)
        self._scale_up(sts, pods, replicas, parallel, partition, current_rev, update_rev)
        pods = self._pods(sts)
        healthy = all(i in pods and is_ready(pods[i]) and not _deleting(pods[i]) for i in range(replicas))
        if self._scale_down(sts, pods, replicas, parallel, healthy) and rolling and healthy:
            for i in reversed(range(partition, replicas)):
                if pods[i]["metadata"]["labels"].get(REVISION_LABEL) != update_rev:
                    self._delete_pod(pods[i])
                    break
        self._write_status(sts, self._pods(sts), replicas, rolling, current_rev, update_rev)

    def _scale_up(
        self, sts: Json, pods: dict[int, Json], replicas: int, parallel: bool, partition: int, cur: str, upd: str
    ) -> None:
        for i in range(replicas):
            pod = pods.get(i)
            if pod is None:
                self._new_pod(sts, i, cur if i < partition else upd)
                if not parallel:
                    return
            elif _deleting(pod) or not is_ready(pod):
                if not parallel:
                    return
            else:
                self._claims(sts, i, pod, scaled_away=False)

    def _scale_down(self, sts: Json, pods: dict[int, Json], replicas: int, parallel: bool, healthy: bool) -> bool:
        """Remove ordinals >= replicas, the highest first; True when none is left to remove."""
        condemned = sorted((i for i in pods if i >= replicas), reverse=True)
        for i in condemned:
            pod = pods[i]
            self._claims(sts, i, pod, scaled_away=True)
            if _deleting(pod):
                if not parallel:
                    return False
                continue
            if not parallel and not healthy:
                return False
            self._delete_pod(pod)
            if not parallel:
                return False
        return not condemned

    def _write_status(self, sts: Json, pods: dict[int, Json], replicas: int, rolling: bool, cur: str, upd: str) -> None:
        counts = {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0, "currentReplicas": 0, "updatedReplicas": 0}
        for pod in pods.values():
            counts["replicas"] += 1
            if is_ready(pod):
                counts["readyReplicas"] += 1
                counts["availableReplicas"] += 1
            if not _deleting(pod):
                revision = pod["metadata"]["labels"].get(REVISION_LABEL)
                counts["currentReplicas"] += revision == cur
                counts["updatedReplicas"] += revision == upd
        if rolling and counts["updatedReplicas"] == counts["readyReplicas"] == counts["replicas"] == replicas:
            cur, counts["currentReplicas"] = upd, counts["updatedReplicas"]
        status = {
            **(sts.get("status") or {}),
            "observedGeneration": sts["metadata"].get("generation", 1),
            **counts,
            "currentRevision": cur,
            "updateRevision": upd,
            "collisionCount": 0,
        }
        latest = self.emulator._get(STS, sts["metadata"]["namespace"], sts["metadata"]["name"])
        same_set = latest is not None and latest["metadata"]["uid"] == sts["metadata"]["uid"]
        if latest is not None and same_set and latest.get("status") != status:  # an equal one would be a no-op
            self.emulator._commit(STS, latest, {**latest, "status": status}, "status")


def _deleting(obj: Json) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))
