"""The operator's own Prometheus metrics: what its handlers did, and the objects it keeps as it last saw them.

Two halves. Counters and a latency histogram of handler runs by kind, handler and result, recorded by the
handlers' decorator (`handlers/observe.py`). And a book of the few figures of each SmtpRelay's and
SendingDomain's status (conditions, replicas, queue, verified), filled from the watch events the operator
receives anyway: no API call is made for a metric. The book becomes gauges at scrape time (a collector), so
the series of a deleted object go with it, and labels stay bounded: kind, namespace and name of the objects,
never a pod. One registry per instance, like the relay's, so tests run several operators in one process.
Pure: no I/O here (the HTTP side is `handlers/observe.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

KINDS = ("SmtpRelay", "SendingDomain")
"""The kinds the book keeps (both always reported, with 0 objects when there are none)."""
RESULTS = ("success", "retry", "error")
"""A handler run's result: returned; asked kopf to retry (waiting for pods to drain, a conflict); failed."""
PREFIX = "relayfleet_operator"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CONDITION_STATUSES = ("True", "False", "Unknown")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    """True, False or Unknown (anything else the API holds is reported as Unknown)."""
    reason: str


@dataclass(frozen=True)
class ObjectState:
    """The figures of one object's status the metrics need (everything else of the body is dropped)."""

    kind: str
    namespace: str
    name: str
    conditions: tuple[Condition, ...] = ()
    replicas: float | None = None
    ready_replicas: float | None = None
    queue_depth: float | None = None
    oldest_age_seconds: float | None = None
    pods_unreachable: float | None = None
    verified: bool | None = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def object_state(kind: str, body: Mapping[str, Any]) -> ObjectState:
    """What the metrics keep of one SmtpRelay or SendingDomain body (a watch event's)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = tuple(
        Condition(
            str(c.get("type")),
            str(c.get("status")) if c.get("status") in CONDITION_STATUSES else "Unknown",
            str(c.get("reason") or ""),
        )
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type")
    )
    queue = status.get("queue") or {}
    verified = status.get("verifiedForSending")
    return ObjectState(
        kind=kind,
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        conditions=conditions,
        replicas=_number(status.get("replicas")),
        ready_replicas=_number(status.get("readyReplicas")),
        queue_depth=_number(queue.get("depth")) if queue.get("podsReporting") else None,
        oldest_age_seconds=_number(queue.get("oldestAgeSeconds")) if queue.get("podsReporting") else None,
        pods_unreachable=_number(queue.get("podsUnreachable")),
        verified=verified if isinstance(verified, bool) else None,
    )


def condition_counts(states: Iterable[ObjectState], kind: str) -> dict[tuple[str, str], int]:
    """(condition type, status) -> how many objects of `kind` have it. Every type some object reports (and
    Ready always) is counted for every object: one that does not report it yet counts as Unknown."""
    of_kind = [s for s in states if s.kind == kind]
    types = sorted({"Ready", *(c.type for s in of_kind for c in s.conditions)})
    counts = {(t, status): 0 for t in types for status in CONDITION_STATUSES}
    for state in of_kind:
        found = {c.type: c.status for c in state.conditions}
        for t in types:
            counts[t, found.get(t, "Unknown")] += 1
    return counts


class ObjectBook:
    """The objects as last seen, by (kind, namespace, name). Written from the operator's event loop, read by a scrape
    in a worker thread (formatting thousands of samples must not hold up the loop), hence the lock."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str, str], ObjectState] = {}
        self._lock = threading.Lock()

    def seen(self, kind: str, body: Mapping[str, Any]) -> None:
        state = object_state(kind, body)
        with self._lock:
            self._states[kind, state.namespace, state.name] = state

    def gone(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((kind, namespace, name), None)

    def states(self) -> list[ObjectState]:
        with self._lock:
            return list(self._states.values())


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)


def _per_relay(states: list[ObjectState]) -> Iterator[GaugeMetricFamily]:
    relays = [s for s in states if s.kind == "SmtpRelay"]
    figures = {
        "relay_replicas": ("Relay pods the StatefulSet runs (status.replicas).", "replicas"),
        "relay_ready_replicas": ("Relay pods ready (status.readyReplicas).", "ready_replicas"),
        "relay_queue_depth": ("Messages queued on the pods that answered (status.queue.depth).", "queue_depth"),
        "relay_queue_oldest_age_seconds": (
            "Age of the oldest queued message over the relay's pods (status.queue.oldestAgeSeconds).",
            "oldest_age_seconds",
        ),
        "relay_pods_unreachable": (
            "Relay pods whose queue figures could not be read (status.queue.podsUnreachable).",
            "pods_unreachable",
        ),
    }
    for name, (documentation, attribute) in figures.items():
        family = _gauge(name, documentation, ["namespace", "name"])
        for state in relays:
            value = getattr(state, attribute)
            if value is not None:
                family.add_metric([state.namespace, state.name], value)
        yield family


class StatusCollector(Collector):
    """The book as gauges, computed at each scrape."""

    def __init__(self, book: ObjectBook) -> None:
        self.book = book

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.book.states()
        objects = _gauge("objects", "SmtpRelays and SendingDomains the operator keeps, by kind.", ["kind"])
        by_condition = _gauge(
            "objects_by_condition",
            "Objects by condition and its status (Unknown: not reported yet).",
            ["kind", "condition", "status"],
        )
        per_object = _gauge(
            "condition",
            "1 for each condition of each object, with its current status and reason.",
            ["kind", "namespace", "name", "condition", "status", "reason"],
        )
        for kind in KINDS:
            objects.add_metric([kind], sum(1 for s in states if s.kind == kind))
            for (condition, status), count in condition_counts(states, kind).items():
                by_condition.add_metric([kind, condition, status], count)
        for state in states:
            for c in state.conditions:
                per_object.add_metric([state.kind, state.namespace, state.name, c.type, c.status, c.reason], 1)
        verified = _gauge(
            "domain_verified",
            "1 when the SendingDomain is verified for sending (status.verifiedForSending), else 0.",
            ["namespace", "name"],
        )
        for state in states:
            if state.kind == "SendingDomain":
                verified.add_metric([state.namespace, state.name], 1.0 if state.verified else 0.0)
        yield from (objects, by_condition, per_object, verified)
        yield from _per_relay(states)


class OperatorMetrics:
    """Every metric of one operator instance, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            f"{PREFIX}_reconciles",
            "Handler runs by kind, handler and result (success, retry, error).",
            ["kind", "handler", "result"],
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Handler runs that failed or were retried because of an error, by the error's type.",
            ["kind", "handler", "error"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time one handler run took, by kind and handler.",
            ["kind", "handler"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.book = ObjectBook()
        r.register(StatusCollector(self.book))

    def observe(self, kind: str, handler: str, result: str, seconds: float, error: str = "") -> None:
        """One handler run: its result, its duration, and the error's type when there was one."""
        if result not in RESULTS:
            raise ValueError(f"result must be one of {', '.join(RESULTS)}, not {result!r}")
        self.reconciles.labels(kind, handler, result).inc()
        self.latency.labels(kind, handler).observe(seconds)
        if error:
            self.errors.labels(kind, handler, error).inc()
