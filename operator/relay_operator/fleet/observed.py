"""What the operator's watches last showed of each SmtpRelay's StatefulSet and pods: an informer cache.

Why: on an idle fleet the resync timer would otherwise read every SmtpRelay's StatefulSet and list its pods
each interval (at 1,000 relays, about 35 requests a second) only to find them unchanged, while the watches
already stream every change. This keeps, from those events, the few fields that status and telemetry read.
Pure bookkeeping, no I/O: the handlers feed it, and a relay it cannot answer for (never seen, or the pods it
holds disagree with the StatefulSet's count, as while the operator's watches are still listing) is read
from the API as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INSTANCE_LABEL = "app.kubernetes.io/instance"
_STATEFULSET_META = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
_POD_META = ("name", "namespace", "uid", "deletionTimestamp")
_POD_STATUS = ("phase", "podIP")

Key = tuple[str, str]


def _pick(source: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: source[k] for k in keys if source and source.get(k) is not None}


def _slim_statefulset(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields compute_status reads: generation, desired replicas, the controller's status."""
    return {
        "kind": "StatefulSet",
        "metadata": _pick(body.get("metadata"), _STATEFULSET_META),
        "spec": _pick(body.get("spec"), ("replicas",)),
        "status": dict(body.get("status") or {}),
    }


def _slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the telemetry's admin calls read: name, uid, terminating, phase and address."""
    return {"metadata": _pick(body.get("metadata"), _POD_META), "status": _pick(body.get("status"), _POD_STATUS)}


class Observed:
    """StatefulSets by (namespace, name) and pods by (namespace, SmtpRelay name) then uid."""

    def __init__(self) -> None:
        self._statefulsets: dict[Key, dict[str, Any]] = {}
        self._pods: dict[Key, dict[str, dict[str, Any]]] = {}

    def saw_statefulset(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self._statefulsets.pop(key, None)
        else:
            self._statefulsets[key] = _slim_statefulset(body)

    def saw_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        relay = (meta.get("labels") or {}).get(INSTANCE_LABEL)
        uid = str(meta.get("uid") or "")
        if not relay or not uid:
            return
        key = (str(meta.get("namespace") or "default"), str(relay))
        if event_type == "DELETED":
            pods = self._pods.get(key)
            if pods is not None:
                pods.pop(uid, None)
                if not pods:
                    del self._pods[key]
        else:
            self._pods.setdefault(key, {})[uid] = _slim_pod(body)

    def forget(self, namespace: str, name: str) -> None:
        """An SmtpRelay was deleted: what was kept of its children goes (their DELETED events may follow)."""
        self._statefulsets.pop((namespace, name), None)
        self._pods.pop((namespace, name), None)

    def statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The last StatefulSet seen, or None when none was (then read it: it may not be watched yet)."""
        return self._statefulsets.get((namespace, name))

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        """The relay's pods as last seen, when they agree with its StatefulSet's pod count; else None."""
        statefulset = self._statefulsets.get((namespace, name))
        if statefulset is None:
            return None
        pods = self._pods.get((namespace, name), {})
        if len(pods) != int(statefulset["status"].get("replicas") or 0):
            return None
        return sorted(pods.values(), key=lambda p: str(p["metadata"].get("name", "")))
