"""The watches on an SmtpRelay's children: a deleted or hand-edited child is put back, status follows the pods.

The StatefulSets' and the relay pods' events also feed `fleet.observed`, so the resync timer reads neither.

Every child kind is watched with a server-side label selector (`wiring.configure` sets it), so the operator
streams only its own children, never every StatefulSet or ConfigMap of the cluster. `relays.drift` decides
what an event needs; a reconcile it asks for is debounced per SmtpRelay (several children of one relay
changing together cost one reconcile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from relay_operator.events import recorder
from relay_operator.fleet import drain
from relay_operator.fleet.observed import Observed
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers.wiring import client
from relay_operator.kube import ApiError
from relay_operator.relays import reconcile as rec
from relay_operator.relays.drift import (
    CHILD_RESOURCES,
    NETWORK_POLICIES,
    SERVICE_MONITORS,
    child_event_action,
    owner_name,
)
from relay_operator.relays.render.common import MANAGED_BY
from relay_operator.settings import Settings

logger = logging.getLogger(__name__)

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
PODS = ("", "v1", "pods")
"""Watched (with the same label selector) for `Observed` only: pods are the StatefulSet's, never healed here."""
HEAL_DELAY = 0.5
"""Seconds an SmtpRelay's reconcile waits after a child's event, to take its other children's events along."""


def watched_resources(settings: Settings) -> list[tuple[str, str, str]]:
    """The child kinds this operator renders, so watches (and needs list/watch RBAC on)."""
    resources = list(CHILD_RESOURCES)
    if settings.network_policy:
        resources.append(NETWORK_POLICIES)
    if settings.service_monitor:
        resources.append(SERVICE_MONITORS)
    return resources


def register(registry: kopf.OperatorRegistry, settings: Settings, telemetry: Telemetry, observed: Observed) -> None:
    """A watch per child kind on `registry`, all sharing one debounce per SmtpRelay, and one on the pods."""
    pending: dict[tuple[str, str], asyncio.Task[None]] = {}
    triggers: dict[tuple[str, str], list[tuple[str | None, dict[str, Any]]]] = {}

    async def heal(namespace: str, name: str) -> None:
        await asyncio.sleep(HEAL_DELAY)
        pending.pop((namespace, name), None)
        kube = await client()
        # Judged again now: a watch event can arrive before the response of the write that caused it, when the
        # operator did not yet know that version as its own; after the delay it does.
        events_seen = triggers.pop((namespace, name), [])
        if all(
            child_event_action(kind, body, kube.seen.get(str(body["metadata"].get("uid") or ""))) != "reconcile"
            for kind, body in events_seen
        ):
            return
        relay = await kube.get("SmtpRelay", namespace, name)
        if relay is None or relay["metadata"].get("deletionTimestamp"):
            return  # the children are going with their owner
        try:
            with recorder(relay) as events:
                await drain.reconcile(relay, kube, settings, events, telemetry)
        except ApiError as exc:  # the relay's own handlers retry; this was a courtesy
            logger.warning("reconcile of %s/%s after a child's change failed: %s", namespace, name, exc)

    def schedule(namespace: str, name: str, kind: str | None, body: Mapping[str, Any]) -> None:
        key = (namespace, name)
        meta = body.get("metadata") or {}
        triggers.setdefault(key, []).append((kind, {"kind": body.get("kind"), "metadata": dict(meta)}))
        if key not in pending:
            pending[key] = asyncio.ensure_future(heal(namespace, name))

    async def child_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        if body.get("kind") == "StatefulSet":
            observed.saw_statefulset(type, body)
        name = owner_name(body)
        if name is None:
            return
        namespace = body.metadata.namespace or "default"
        kube = await client()
        action = child_event_action(type, body, kube.seen.get(str(body.metadata.uid or "")))
        if action == "reconcile":
            schedule(namespace, name, type, body)
        elif action == "status":
            await rec.refresh_status(kube, namespace, name, statefulset=body)

    async def cancel_pending(**_: Any) -> None:
        """At shutdown: reconciles still waiting out their delay are dropped (each relay resumes on start)."""
        for task in list(pending.values()):
            task.cancel()
        pending.clear()
        triggers.clear()

    async def pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        observed.saw_pod(type, body)

    for group, version, plural in watched_resources(settings):
        kopf.on.event(group, version, plural, registry=registry, labels=MANAGED)(child_event)
    kopf.on.event(*PODS, registry=registry, labels=MANAGED)(pod_event)
    kopf.on.cleanup(registry=registry, id="cancel_pending_heals")(cancel_pending)
