"""SmtpRelay status from what was observed: pure, so every condition is unit-tested with plain data.

The result is a JSON merge patch for `.status`: a None value removes a field that is no longer known
(e.g. the queue depth when no relay answered), so a stale figure never lingers in `kubectl get`.
Conditions follow the Kubernetes convention; `lastTransitionTime` moves only when `status` changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay_operator.conditions import condition
from relay_operator.relays.render.common import Owner, selector_string
from relay_operator.relays.render.services import endpoint
from relay_operator.relays.validation import Problem
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.config.units import parse_duration

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SPOOL_PERSISTENT = "SpoolPersistent"
CONFIG_APPLIED = "ConfigApplied"


@dataclass(frozen=True)
class DrainReport:
    """A scale-down under way (fleet/scaledown.py): status.drain, Progressing's message, DrainStuck's."""

    status: Mapping[str, Any] | None = None
    """status.drain; None: no drain (the field is cleared)."""
    progress: str = ""
    stuck: str = ""


QUEUE_FIELDS = (
    *("depth", "active", "deferred", "quarantined", "oldestAgeSeconds"),
    *("podsReporting", "podsUnreachable", "unreachable", "ratesPerMinute", "configDigests"),
)
"""status.queue's fields (fleet/queue_status.py fills them)."""
QUEUE_REASONS = frozenset({"QueueBacklog", "UpstreamFailing"})
"""Degraded reasons that come from the pods' queue figures, computed afresh on every refresh (not kept over from
the last reconcile like a spec problem)."""


def upstream_failing(queue: Mapping[str, Any]) -> bool:
    """Deliveries fail on the pods that report and none succeeds: the upstream (or DNS, or the network) is down."""
    rates = queue.get("ratesPerMinute") or {}
    return bool(rates) and rates.get("deliveryFailures", 0) > 0 and rates.get("delivered", 0) == 0


def queue_problems(spec: SmtpRelaySpec | None, queue: Mapping[str, Any] | None) -> list[Problem]:
    """Degraded verdicts of the queue: its oldest message past spec.queue.backlogAge; deliveries failing on the
    pods that report while none succeeds."""
    if spec is None or not queue:
        return []
    found = []
    oldest, limit = int(queue.get("oldestAgeSeconds") or 0), parse_duration(spec.queue.backlog_age)
    if oldest > limit:
        found.append(Problem("QueueBacklog", f"the oldest queued message waits since {oldest} s, longer than"
                             f" spec.queue.backlogAge ({spec.queue.backlog_age}); see status.queue"))  # fmt: skip
    if upstream_failing(queue):
        rates = queue.get("ratesPerMinute") or {}
        failures = rates.get("deliveryFailures")
        text = f"deliveries fail on every reporting pod ({failures}/min, none delivered): check the upstream or MX"
        found.append(Problem("UpstreamFailing", text))
    return found


def ports_summary(spec: SmtpRelaySpec) -> str:
    """`2525,587/starttls,465/implicit`: the Ports printer column."""
    return ",".join(str(lst.port) if lst.tls == "none" else f"{lst.port}/{lst.tls}" for lst in spec.listeners)


def _progress(statefulset: Mapping[str, Any] | None, desired: int) -> tuple[bool, str, str]:
    if statefulset is None:
        return True, "Creating", "the relay StatefulSet does not exist yet"
    meta = statefulset.get("metadata") or {}
    observed = statefulset.get("status") or {}
    generation = int(meta.get("generation") or 0)
    if int(observed.get("observedGeneration") or 0) < generation:
        return True, "Updating", "the StatefulSet controller has not yet seen the latest pod template"
    current = int(observed.get("replicas") or 0)
    updated = int(observed.get("updatedReplicas") or 0)
    if observed.get("currentRevision") != observed.get("updateRevision") or updated < min(current, desired):
        return True, "RollingUpdate", f"{updated} of {desired} pods run the latest template"
    if current != desired:
        return True, "Scaling", f"scaling from {current} to {desired} pods"
    ready = int(observed.get("readyReplicas") or 0)
    if ready < desired:
        return True, "WaitingForPods", f"{ready} of {desired} pods ready"
    return False, "Stable", f"{desired} pods up to date"


def _spool_condition(spec: SmtpRelaySpec, gen: int, old: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """A warning that stays visible while the spool is ephemeral: a lost pod loses its queued mail."""
    if spec.queue.ephemeral:
        text = "spec.queue.ephemeral: true keeps each pod's queue in an emptyDir: a pod that is lost loses its mail"
        return condition(SPOOL_PERSISTENT, False, "EphemeralSpool", text, gen, old, now)
    text = f"each pod's queue is on its own PersistentVolumeClaim ({spec.queue.storage})"
    return condition(SPOOL_PERSISTENT, True, "PersistentVolumeClaim", text, gen, old, now)


def _config_condition(
    current: str, queue: Mapping[str, Any] | None, gen: int, old: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    """Does every pod that answered run the config last rendered (the kubelet refreshes a mounted ConfigMap
    within about a minute, and the relay reloads it)?"""
    runs: Mapping[str, Sequence[str]] = (queue or {}).get("configDigests") or {}
    if not current or not runs:
        return condition(CONFIG_APPLIED, "Unknown", "NotReported", "no pod has reported its config yet", gen, old, now)
    behind = sorted(name for digest, names in runs.items() if digest != current for name in names)
    if behind:
        text = f"{', '.join(behind)} still run an earlier config (the kubelet refreshes it within about a minute)"
        return condition(CONFIG_APPLIED, False, "Pending", text, gen, old, now)
    count = sum(len(names) for names in runs.values())
    return condition(
        CONFIG_APPLIED, True, "Applied", f"the {count} reporting pods run the current config", gen, old, now
    )


def compute_status(
    owner: Owner,
    spec: SmtpRelaySpec | None,
    statefulset: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    now: datetime,
    problems: Sequence[Problem] = (),
    queue: Mapping[str, Any] | None = None,
    drain: DrainReport | None = None,
    config_digest: str | None = None,
) -> dict[str, Any]:
    """The `.status` merge patch for one SmtpRelay.

    `spec` is None when the spec does not validate: then only what can still be known is reported
    (pods, conditions), and endpoint/ports keep their last value. `queue` is status.queue as the pods just
    reported it; without it (a refresh between two samples) the last one stands and still judges the queue.
    """
    old = dict(previous or {})
    old_conditions = list(old.get("conditions") or [])
    sts_status = (statefulset or {}).get("status") or {}
    sts_spec = (statefulset or {}).get("spec") or {}
    desired = spec.replicas if spec is not None else int(sts_spec.get("replicas") or 0)
    replicas = int(sts_status.get("replicas") or 0)
    ready = int(sts_status.get("readyReplicas") or 0)
    gen = owner.generation

    problems = [*problems, *queue_problems(spec, queue if queue is not None else old.get("queue"))]
    if drain is not None and drain.stuck:
        problems.append(Problem("DrainStuck", drain.stuck))
    if problems:
        degraded = condition(
            DEGRADED, True, problems[0].reason, "; ".join(p.message for p in problems), gen, old_conditions, now
        )
    else:
        degraded = condition(DEGRADED, False, "AsExpected", "the spec can be served", gen, old_conditions, now)
    moving, reason, message = _progress(statefulset, desired)
    draining = drain.status if drain is not None else old.get("drain")
    if draining:  # the StatefulSet keeps its replicas until the leaving pods are empty
        waiting = ", ".join(str(w) for w in draining.get("waitingFor") or [])
        moving, reason = True, "Draining"
        message = drain.progress if drain is not None and drain.progress else f"draining: waiting for {waiting}"
    progressing = condition(PROGRESSING, moving, reason, message, gen, old_conditions, now)
    if desired == 0:
        ready_condition = condition(READY, False, "ScaledToZero", "replicas is 0", gen, old_conditions, now)
    elif ready >= desired:
        text = f"{ready} of {desired} pods ready"
        ready_condition = condition(READY, True, "AllReplicasReady", text, gen, old_conditions, now)
    elif ready > 0:
        text = f"{ready} of {desired} pods ready"
        ready_condition = condition(READY, False, "ReplicasNotReady", text, gen, old_conditions, now)
    else:
        ready_condition = condition(READY, False, "NoReplicasReady", f"0 of {desired} pods ready", gen,
                                    old_conditions, now)  # fmt: skip

    conditions = [ready_condition, progressing, degraded]
    if spec is not None:
        conditions.append(_spool_condition(spec, gen, old_conditions, now))
    digest = config_digest if config_digest is not None else str(old.get("configDigest") or "")
    conditions.append(
        _config_condition(digest, queue if queue is not None else old.get("queue"), gen, old_conditions, now)
    )
    if problems:
        phase = DEGRADED
    elif ready_condition["status"] == "True" and not moving:
        phase = READY
    else:
        phase = PROGRESSING

    patch: dict[str, Any] = {
        "observedGeneration": gen,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector_string(owner),
        "phase": phase,
        "conditions": conditions,
    }
    if drain is not None:
        patch["drain"] = dict(drain.status) if drain.status else None
    if config_digest is not None:
        patch["configDigest"] = config_digest
    if queue is not None:  # every field named, a missing one as None: a merge patch must remove stale figures
        patch["queue"] = {key: queue.get(key) for key in QUEUE_FIELDS}
        patch["queueDepth"] = queue.get("depth") if queue.get("podsReporting") else None
    if spec is not None:
        patch["endpoint"] = endpoint(owner, spec)
        patch["ports"] = ports_summary(spec)
    return patch
