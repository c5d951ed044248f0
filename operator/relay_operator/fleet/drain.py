"""The I/O of a scale-down: drain the leaving pods and read what they still hold (the plan is scaledown.py).

The pods are asked through their admin API with the relays' token: `POST /drain` is idempotent and answers the
queue left, so one request per leaving pod and pass both drains and measures. Its body names the admin URLs of
the staying pods that are Ready, so the leaving pods hand their queue off to them instead of waiting for the
upstream (`{"peers": []}` when none is Ready: they only deliver). When the relay is asked for more replicas
again, pods a past drain left refusing mail are undrained.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from relay_operator.fleet.scaledown import LeavingPod, Plan, answered, drain_event, leaving_ordinals, plan
from relay_operator.fleet.telemetry import Telemetry, admin_url, is_ready
from relay_operator.kube import Kube
from relay_operator.relays import reconcile as rec
from relay_operator.relays.render.common import Owner
from relay_operator.relays.validation import parse_or_problems
from relay_operator.settings import Settings
from smtp_relay.config.units import parse_duration


async def scale_plan(
    telemetry: Telemetry,
    kube: Kube,
    owner: Owner,
    desired: int,
    statefulset: Mapping[str, Any] | None,
    previous_drain: Mapping[str, Any] | None,
    now: datetime,
    drain_timeout: timedelta,
    handoff: bool = True,
) -> Plan:
    """The replicas the StatefulSet may have now, draining the pods that go first (handing their queue off to the
    Ready pods that stay, unless `handoff` is off)."""
    if statefulset is None:
        return Plan(replicas=desired)
    current = int((statefulset.get("spec") or {}).get("replicas") or 0)
    token = await telemetry.token(kube, owner)
    if desired >= current:
        if previous_drain:  # a scale-down was called off: the pods it drained stay, so they take mail again
            for name in leaving_ordinals(owner.name, int(previous_drain.get("targetReplicas") or 0), current):
                pod = await kube.get("Pod", owner.namespace, name)
                if pod is not None:
                    await telemetry.call(pod, "POST", "/undrain", token)
        return Plan(replicas=desired)
    peers = []
    for name in leaving_ordinals(owner.name, 0, desired) if handoff else []:  # the pods that stay
        pod = await kube.get("Pod", owner.namespace, name)
        if pod is not None and is_ready(pod):
            peers.append(admin_url(pod))
    leaving = []
    for name in leaving_ordinals(owner.name, desired, current):
        pod = await kube.get("Pod", owner.namespace, name)
        if pod is None:  # its claim may hold mail, and the StatefulSet controller brings the pod back
            leaving.append(LeavingPod(name, None, "pod not found"))
            continue
        body, error = await telemetry.call(pod, "POST", "/drain", token, {"peers": peers})
        if error.startswith("401"):
            telemetry.forget_token(owner)
        leaving.append(answered(name, body, error))
    return plan(desired, current, leaving, previous_drain, now, drain_timeout, len(peers) if handoff else None)


async def reconcile(
    body: Mapping[str, Any],
    kube: Kube,
    settings: Settings,
    events: rec.Recorder,
    telemetry: Telemetry,
    *,
    fresh: bool = False,
    write_status_patch: bool = True,
) -> tuple[rec.Result, Plan | None]:
    """`relays.reconcile`, with a scale-down held back until the leaving pods are drained: every path that
    reconciles an SmtpRelay goes through here, so no path can shrink the StatefulSet behind the drain."""
    owner = Owner.from_body(body)
    spec, _ = parse_or_problems(body)
    scale: Plan | None = None
    if spec is not None and not fresh:
        statefulset = await kube.get("StatefulSet", owner.namespace, owner.name)
        previous = (body.get("status") or {}).get("drain")
        timeout = timedelta(seconds=parse_duration(spec.queue.drain_timeout))
        now = datetime.now(UTC)
        scale = await scale_plan(
            telemetry, kube, owner, spec.replicas, statefulset, previous, now, timeout, spec.queue.handoff
        )
        current = int(((statefulset or {}).get("spec") or {}).get("replicas") or 0)
        event = drain_event(previous, scale, current)
        if event is not None:
            events.info(*event)
    result = await rec.reconcile(
        body,
        kube,
        settings,
        events,
        fresh=fresh,
        write_status_patch=write_status_patch,
        replicas=scale.replicas if scale is not None else None,
        drain=scale.report() if scale is not None else None,
    )
    return result, scale
