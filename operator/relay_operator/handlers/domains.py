"""The SendingDomain handlers: which kopf cause leads to which `domains.reconcile` call.

Created, resumed or changed (the spec, or the relayfleet.io/recheck and relayfleet.io/rotate-dkim annotations):
checked at once. The timer checks again when status.nextCheck is due (later while DNS does not answer). No
finalizer: the key Secrets go with the domain by ownerReference, and the relays it named are reconciled when
its deletion is seen. Whenever the verdict or the active key changes, the SmtpRelays it names are reconciled,
so their pods get the new set of domains and keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf

from relay_operator.domains import reconcile as dom
from relay_operator.domains.status import check_due
from relay_operator.events import recorder
from relay_operator.fleet import drain
from relay_operator.fleet.telemetry import Telemetry
from relay_operator.handlers.observe import instrumented
from relay_operator.handlers.wiring import client, retried_when_transient
from relay_operator.kube import Kube
from relay_operator.metrics import OperatorMetrics
from relay_operator.settings import Settings
from smtp_relay.config.spec import API_GROUP, API_VERSION

DOMAINS = (API_GROUP, API_VERSION, "sendingdomains")


async def _reconcile_relays(
    kube: Kube, namespace: str, names: Sequence[str], settings: Settings, telemetry: Telemetry
) -> None:
    async def one(body: dict[str, Any]) -> None:
        with recorder(body) as events:
            await drain.reconcile(body, kube, settings, events, telemetry)

    await dom.reconcile_relays(kube, namespace, names, one)


async def _check(body: Mapping[str, Any], settings: Settings, telemetry: Telemetry) -> None:
    kube = await client()
    with recorder(body) as events, retried_when_transient():
        result = await dom.reconcile(body, kube, settings, events)
        namespace = str(body["metadata"].get("namespace") or "default")
        await _reconcile_relays(kube, namespace, result.relays, settings, telemetry)


def register(
    registry: kopf.OperatorRegistry, settings: Settings, telemetry: Telemetry, metrics: OperatorMetrics
) -> None:
    """Register the SendingDomain handlers on `registry`, the checks counted and timed in `metrics`."""
    counted = instrumented(metrics, "SendingDomain")

    @kopf.on.resume(*DOMAINS, registry=registry)
    @kopf.on.create(*DOMAINS, registry=registry)
    @kopf.on.update(*DOMAINS, registry=registry)
    @counted
    async def domain_changed(body: kopf.Body, **_: Any) -> None:
        """Keys, DNS checks, rotation, status; the named relays when the verdict or the active key changed."""
        await _check(body, settings, telemetry)

    @kopf.timer(*DOMAINS, registry=registry, interval=settings.domain_recheck_seconds)
    @counted
    async def recheck(body: kopf.Body, **_: Any) -> None:
        """The periodic check, when status.nextCheck says it is due."""
        if check_due(body.get("status"), datetime.now(UTC), slack=settings.domain_recheck_seconds / 10):
            await _check(body, settings, telemetry)

    @kopf.on.event(*DOMAINS, registry=registry)
    async def domain_deleted(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A domain gone: the relays it named drop it (its Secrets go by their ownerReference)."""
        if event.get("type") == "DELETED":
            names = list((body.get("spec") or {}).get("relays") or [])
            await _reconcile_relays(await client(), body.metadata.namespace or "default", names, settings, telemetry)
