"""The SmtpRelay handlers: which kopf cause leads to which `relays.reconcile` call.

The handlers are closures registered by `register`, because the resync interval comes from the
settings. Their ids (kopf's progress annotations) are the qualified names, `register.<locals>.*`:
renaming `register` or a handler changes them.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import kopf

from relay_operator.backoff import retry_delay
from relay_operator.events import recorder
from relay_operator.fleet import drain
from relay_operator.fleet.autoscale import Stabilizer, decision
from relay_operator.fleet.observed import Observed
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers.observe import instrumented
from relay_operator.handlers.wiring import client, creation_handled, retried_when_transient
from relay_operator.kube import ApiError
from relay_operator.metrics import OperatorMetrics
from relay_operator.relays import reconcile as rec
from relay_operator.relays.render.common import Owner
from relay_operator.relays.status import QUEUE_REASONS
from relay_operator.relays.validation import parse_or_problems
from relay_operator.settings import Settings
from smtp_relay.config.spec import API_GROUP, API_VERSION

RELAYS = (API_GROUP, API_VERSION, "smtprelays")
DRAIN_POLL_SECONDS = 5
"""How soon a scale-down that waits for its leaving pods looks again."""


def _degraded(body: kopf.Body) -> bool:
    """Degraded for something a full reconcile may heal (a Secret created later); the queue's verdicts are
    judged afresh by every refresh instead."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Degraded" and c.get("status") == "True" and c.get("reason") not in QUEUE_REASONS
        for c in conditions
    )


def _deletes_claims(spec: kopf.Spec, **_: Any) -> bool:
    """Only a relay whose claims go with it needs the deletion handler, and so kopf's finalizer: the
    others are deleted without waiting for us (one request and one event round trip less each)."""
    return bool((spec.get("queue") or {}).get("deleteClaimsOnDelete"))


def register(
    registry: kopf.OperatorRegistry,
    settings: Settings,
    telemetry: Telemetry,
    observed: Observed,
    metrics: OperatorMetrics,
) -> None:
    """Register the SmtpRelay handlers on `registry`, each run counted and timed in `metrics`."""
    counted = instrumented(metrics, "SmtpRelay")

    @kopf.on.resume(*RELAYS, registry=registry)
    @kopf.on.create(*RELAYS, registry=registry)
    @kopf.on.update(*RELAYS, registry=registry)
    @counted
    async def relay_changed(
        body: kopf.Body, patch: kopf.Patch, reason: str, retry: int, logger: kopf.Logger, **_: Any
    ) -> None:
        """Reconcile. The status goes into kopf's own patch (written with its progress annotations)
        rather than a PATCH of ours during the handler: that one would produce a watch event without
        kopf's last-handled annotation, which kopf, when its watch lags by more than
        `consistency_timeout`, takes for a not yet handled creation and runs this handler again."""
        kube = await client()
        with recorder(body) as events, retried_when_transient():
            fresh = reason == kopf.Reason.CREATE
            result, scale = await drain.reconcile(
                body, kube, settings, events, telemetry, fresh=fresh, write_status_patch=False
            )
        telemetry.remember_token(Owner.from_body(body), result.admin_token)
        if result.status_changed:
            patch.status.update(result.status)
        logger.info("reconciled: changed=%s problems=%d", result.changed, len(result.problems))
        refused = [p for p in result.problems if p.reason in rec.RETRIED_REASONS]
        if refused:  # the status (in kopf's patch) says why; try again, more slowly each time
            raise kopf.TemporaryError("; ".join(p.message for p in refused), delay=retry_delay(retry))
        if scale is not None and scale.drain:  # leaving pods still hold mail: look again soon
            raise kopf.TemporaryError(scale.progress, delay=DRAIN_POLL_SECONDS)

    stabilizers: dict[tuple[str, str], Stabilizer] = {}

    @kopf.timer(*RELAYS, registry=registry, interval=settings.resync_seconds, initial_delay=settings.resync_seconds)
    @counted
    async def resync(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        """Periodic refresh with the pods' queue figures; a Degraded relay gets a full reconcile first, so a
        Secret created later heals it. An API server that is slow or failing makes it try again soon."""
        with retried_when_transient():
            await refresh(body, logger)

    async def refresh(body: kopf.Body, logger: kopf.Logger) -> None:
        if not creation_handled(body):
            return  # the create handler has not finished (a loaded API server): it reports the status itself
        kube = await client()
        namespace, name = body.metadata.namespace or "default", body.metadata.name or ""
        current: kopf.Body | None = body  # what kopf's watch showed: no need to read it again
        if _degraded(body) or (body.get("status") or {}).get("drain"):
            with recorder(body) as events:
                await drain.reconcile(body, kube, settings, events, telemetry)
            current = None  # the reconcile may have changed it: read it afresh
        try:
            queue = await telemetry.queue_status(kube, Owner.from_body(body), observed.pods(namespace, name))
        except (ApiError, TimeoutError, aiohttp.ClientError) as exc:  # the pods not even listed: the last figures stand
            logger.warning("queue figures of %s/%s not read: %s", namespace, name, exc or type(exc).__name__)
            queue = None
        statefulset = observed.statefulset(namespace, name)
        await rec.refresh_status(kube, namespace, name, queue=queue, body=current, statefulset=statefulset)
        spec, _problems = parse_or_problems(body)
        if spec is not None and spec.autoscaling is not None and queue is not None:
            stabilizer = stabilizers.setdefault((namespace, name), Stabilizer())
            target = decision(stabilizer, time.monotonic(), spec.replicas, queue, spec.autoscaling)
            if target is not None and target != spec.replicas:  # the update handler scales, through the drain
                await kube.patch("SmtpRelay", namespace, name, {"spec": {"replicas": target}})
                with recorder(body) as events:
                    per_pod = spec.autoscaling.target_queue_per_replica
                    events.info("Autoscaled", f"replicas {spec.replicas} -> {target}: {queue.get('depth')} queued,"
                                f" {per_pod} per pod")  # fmt: skip

    @kopf.on.event(*RELAYS, registry=registry)
    async def relay_gone(body: kopf.Body, type: str | None, **_: Any) -> None:
        """What telemetry and the watch cache kept of a deleted SmtpRelay goes with it."""
        if type == "DELETED":
            namespace, name = body.metadata.namespace or "default", body.metadata.name or ""
            telemetry.forget(namespace, name)
            observed.forget(namespace, name)
            stabilizers.pop((namespace, name), None)

    @kopf.on.cleanup(registry=registry, id="close_telemetry")
    async def close_telemetry(**_: Any) -> None:
        await telemetry.close()

    @kopf.on.delete(*RELAYS, registry=registry, when=_deletes_claims)
    @counted
    async def relay_deleted(body: kopf.Body, **_: Any) -> None:
        """Children go with the ownerReferences; spool PVCs only when spec.queue.deleteClaimsOnDelete."""
        kube = await client()
        with recorder(body) as events:
            try:
                await rec.delete_claims(body, kube, events)
            except rec.StillDeleting as exc:
                raise kopf.TemporaryError(str(exc), delay=2) from exc
