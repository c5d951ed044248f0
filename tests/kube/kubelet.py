"""The node side of pods: a scheduler that binds them and a pluggable kubelet that runs them.

Why: StatefulSet readiness, rolling updates and graceful termination all hinge on pod status, which only a
node writes. The emulator binds every new pod to one node (``spec.nodeName``) and hands it to a `Kubelet`:
by default `InstantKubelet`, which reports a pod Running and Ready shortly after it starts and stopped
shortly after its deletion; a test plugs in its own (e.g. one that starts a real process per pod) and
reports through the thread-safe `Node` handle. A deleted pod keeps its ``deletionTimestamp`` until the
kubelet says it stopped, or until its grace period (``terminationGracePeriodSeconds``) runs out, when it is
killed (``Kubelet.kill`` if the kubelet has one) and removed, as the real kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from typing import TYPE_CHECKING, Protocol

import kmock

from tests.kube.deletion import delete
from tests.kube.emulator import ApiError, Json, now

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

PODS = kmock.resource("", "v1", "pods")
NODE = "emulated-node"


class Kubelet(Protocol):
    """Called on the emulator's event loop: must not block (start threads or tasks for slow work)."""

    def start(self, pod: Json, node: Node) -> None:
        """A pod was bound to the node: run it, then report ``node.ready(...)`` when it is."""

    def stop(self, pod: Json, grace: int, node: Node) -> None:
        """The pod is being deleted: stop it within `grace` seconds and report ``node.stopped(...)``."""


class InstantKubelet:
    """Every pod starts and becomes Ready after `start_delay` s and stops `stop_delay` s after its deletion."""

    def __init__(self, start_delay: float = 0.05, stop_delay: float = 0.05) -> None:
        self.start_delay, self.stop_delay = start_delay, stop_delay

    def start(self, pod: Json, node: Node) -> None:
        meta = pod["metadata"]
        asyncio.get_running_loop().call_later(self.start_delay, node.ready, meta["namespace"], meta["name"])

    def stop(self, pod: Json, grace: int, node: Node) -> None:
        meta = pod["metadata"]
        delay = min(self.stop_delay, grace)
        asyncio.get_running_loop().call_later(delay, node.stopped, meta["namespace"], meta["name"])


class Node:
    """The node and its kubelet's view of the API; `ready` and `stopped` may be called from any thread."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator, self.name = emulator, NODE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, Json] = {}  # uid -> the pod as started
        self._stopping: dict[str, asyncio.TimerHandle] = {}  # uid -> the grace period's deadline
        self._ips = itertools.count(2)
        self.pod_addresses: list[str] = []
        """Addresses handed to the pods it starts, in order, before the default scheme (e.g. where a benchmark's
        responder listens for the pods' admin calls; see tests/kube/server.py --pod-addresses)."""

    @property
    def kubelet(self) -> Kubelet:
        """``emulator.kubelet``: set it before the pods it should run are created."""
        kubelet: Kubelet = self.emulator.kubelet
        return kubelet

    def ready(self, namespace: str, name: str, ready: bool = True) -> None:
        """Report the pod Running, with its Ready condition as given."""
        self._soon(self._set_ready, namespace, name, ready)

    def stopped(self, namespace: str, name: str) -> None:
        """Report the pod's containers gone: the kubelet then deletes the pod for good."""
        self._soon(self._finish, namespace, name)

    def _soon(self, fn: object, *args: object) -> None:
        assert self._loop is not None, "the node runs once the emulator serves"
        self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

    def run_pass(self) -> None:
        """Bind new pods, start them, pass deletions on; forget pods removed behind the kubelet's back."""
        self._loop = asyncio.get_running_loop()
        seen = set()
        for _, pod in list(self.emulator._all(PODS)):
            meta, uid = pod["metadata"], pod["metadata"]["uid"]
            seen.add(uid)
            if meta.get("deletionTimestamp"):
                if uid not in self._stopping:
                    self._begin_stop(pod)
                continue
            if not (pod.get("spec") or {}).get("nodeName"):
                pod = self._bind(pod)
            if uid not in self._running:
                self._running[uid] = pod
                self.kubelet.start(copy.deepcopy(pod), self)
        for uid in list(self._running):
            if uid not in seen:  # force-deleted: the kubelet still has to stop it, at once
                pod = self._running.pop(uid)
                if uid not in self._stopping:
                    self.kubelet.stop(copy.deepcopy(pod), 0, self)
                handle = self._stopping.pop(uid, None)
                if handle is not None:
                    handle.cancel()

    def _bind(self, pod: Json) -> Json:
        """What the scheduler's Binding does: nodeName, the PodScheduled condition, phase Pending."""
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = self.name
        new = self.emulator._commit(PODS, pod, new, "main")
        status = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}],
            "qosClass": "BestEffort",
        }
        return self.emulator._commit(PODS, new, {**new, "status": status}, "status")

    def _begin_stop(self, pod: Json) -> None:
        meta, uid = pod["metadata"], pod["metadata"]["uid"]
        grace = int(meta.get("deletionGracePeriodSeconds") or 0)
        assert self._loop is not None
        self._stopping[uid] = self._loop.call_later(grace, self._kill, meta["namespace"], meta["name"], uid)
        if uid in self._running:
            self.kubelet.stop(copy.deepcopy(pod), grace, self)
        else:
            self._finish(meta["namespace"], meta["name"])  # never started: nothing to wait for

    def _kill(self, namespace: str, name: str, uid: str) -> None:
        pod = self.emulator._get(PODS, namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid:
            return
        kill = getattr(self.kubelet, "kill", None)
        if kill is not None:
            kill(copy.deepcopy(pod), self)
        self._finish(namespace, name)

    def _finish(self, namespace: str, name: str) -> None:
        pod = self.emulator._get(PODS, namespace, name)
        if pod is None or not pod["metadata"].get("deletionTimestamp"):
            return
        uid = pod["metadata"]["uid"]
        self._running.pop(uid, None)
        handle = self._stopping.pop(uid, None)
        if handle is not None:
            handle.cancel()
        with contextlib.suppress(ApiError):  # already gone
            delete(self.emulator, PODS, namespace, name, {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})

    def _set_ready(self, namespace: str, name: str, ready: bool) -> None:
        pod = self.emulator._get(PODS, namespace, name)
        if pod is None or pod["metadata"]["uid"] not in self._running:
            return
        has_ip = bool((pod.get("status") or {}).get("podIP"))
        address = self.pod_addresses.pop(0) if self.pod_addresses and not has_ip else None
        status = running_status(pod, ready, next(self._ips), address)
        self.emulator._commit(PODS, pod, {**pod, "status": status}, "status")


def running_status(pod: Json, ready: bool, ip: int, address: str | None = None) -> Json:
    """A PodStatus as the kubelet writes it for a running pod (at `address`, else at the `ip`-th default one)."""
    stamp, old = now(), pod.get("status") or {}
    started = old.get("startTime") or stamp
    flag = "True" if ready else "False"
    conditions = [
        {"type": "PodReadyToStartContainers", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": flag},
        {"type": "ContainersReady", "status": flag},
        {"type": "PodScheduled", "status": "True"},
    ]
    for cond in conditions:
        before = next((c for c in old.get("conditions") or [] if c.get("type") == cond["type"]), None)
        same = before is not None and before.get("status") == cond["status"]
        cond["lastTransitionTime"] = before.get("lastTransitionTime", stamp) if same and before else stamp
    containers = [
        {
            "name": c.get("name", ""),
            "image": c.get("image", ""),
            "ready": ready,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": started}},
        }
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    # Loopback addresses (127.244.0.0/16), so an operator that calls its pods (telemetry, drain) stays on this
    # machine: nothing listens there unless a test's kubelet runs a real process at that address.
    ip_text = old.get("podIP") or address or f"127.244.{ip // 250}.{ip % 250 + 2}"
    return {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "podIP": ip_text,
        "podIPs": [{"ip": ip_text}],
        "startTime": started,
        "containerStatuses": containers,
        "qosClass": old.get("qosClass", "BestEffort"),
    }


def is_ready(pod: Json) -> bool:
    """Running and Ready, and not being deleted (the StatefulSet controller's isHealthy)."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready
