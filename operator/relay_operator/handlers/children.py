"""The watches on an SmtpRelay's children: a deleted or hand-edited child is put back, status follows the pods.

The StatefulSets' and the relay pods' events also feed `fleet.observed`, so the resync timer reads neither.

Every child kind is watched with a server-side label selector (`wiring.configure` sets it), so the operator
streams only its own children, never every StatefulSet or ConfigMap of the cluster. `relays.drift` decides
what an event needs; a reconcile it asks for is debounced per SmtpRelay (several children of one relay
changing together cost one reconcile), and so is a status refresh after a StatefulSet's status moved (the pods
of a rollout becoming ready one after the other cost one status write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from relay_operator.events import recorder
from relay_operator.fleet import drain
from relay_operator.fleet.observed import Observed
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers.wiring import client, creation_handled
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
STATUS_DELAY = 1.0
UNHANDLED_PATIENCE = 60
"""How many times a status refresh looks again (every STATUS_DELAY) for a relay whose creation kopf has not yet
recorded as handled (`wiring.creation_handled`), before leaving it to the resync."""
"""Seconds an SmtpRelay's status refresh waits after its StatefulSet's status moved, to take the next moves along
(a rollout or a scale reports every pod created, started and ready: one status write for those, not one each)."""


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
        try:
            relay = await kube.get("SmtpRelay", namespace, name)
            if relay is None or relay["metadata"].get("deletionTimestamp"):
                return  # the children are going with their owner
            if not creation_handled(relay):
                return  # the create handler applies every child itself (and is retried until it did)
            with recorder(relay) as events:
                await drain.reconcile(relay, kube, settings, events, telemetry)
        except (ApiError, TimeoutError, aiohttp.ClientError) as exc:  # the relay's own handlers retry: a courtesy
            logger.warning("reconcile of %s/%s after a child's change failed: %s", namespace, name, exc)

    refreshing: dict[tuple[str, str], asyncio.Task[None]] = {}
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}

    async def refresh(namespace: str, name: str) -> None:
        key = (namespace, name)
        for _ in range(UNHANDLED_PATIENCE):
            await asyncio.sleep(STATUS_DELAY)
            try:
                kube = await client()
                relay = await kube.get("SmtpRelay", namespace, name)
                if relay is not None and not creation_handled(relay):
                    continue  # the create handler still runs: its own patch writes the status; look again later
                refreshing.pop(key, None)
                statefulset = latest.pop(key, None)
                if relay is not None:
                    await rec.refresh_status(kube, namespace, name, statefulset=statefulset, body=relay)
                return
            except (ApiError, TimeoutError, aiohttp.ClientError) as exc:  # the next event or resync tries again
                logger.warning("status of %s/%s after its StatefulSet moved not written: %s", namespace, name, exc)
                break
        refreshing.pop(key, None)
        latest.pop(key, None)

    def schedule_refresh(namespace: str, name: str, statefulset: Mapping[str, Any]) -> None:
        """Refresh the status from the last StatefulSet seen, once the burst of its status events is over."""
        key = (namespace, name)
        latest[key] = statefulset
        if key not in refreshing:
            refreshing[key] = asyncio.ensure_future(refresh(namespace, name))

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
            schedule_refresh(namespace, name, dict(body))

    async def cancel_pending(**_: Any) -> None:
        """At shutdown: reconciles and status refreshes still waiting out their delay are dropped (each relay
        resumes on start)."""
        for task in [*pending.values(), *refreshing.values()]:
            task.cancel()
        pending.clear()
        triggers.clear()
        refreshing.clear()
        latest.clear()

    async def pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        observed.saw_pod(type, body)

    for group, version, plural in watched_resources(settings):
        kopf.on.event(group, version, plural, registry=registry, labels=MANAGED)(child_event)
    kopf.on.event(*PODS, registry=registry, labels=MANAGED)(pod_event)
    kopf.on.cleanup(registry=registry, id="cancel_pending_heals")(cancel_pending)
