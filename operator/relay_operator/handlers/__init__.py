"""kopf wiring: each handler is a few lines that call `reconcile`.

Loaded by `relayfleet-operator` (kopf run -m relay_operator.handlers). Settings come from the
environment when this module is imported, because timer intervals are fixed at registration.
The API client is created per event loop from the credentials kopf logged in with, so tests that
run kopf in a thread against an emulator need only provide the login (see `set_login`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from relay_operator.kube import ApiError, Connection, Kube
from relay_operator.relays import reconcile as rec
from relay_operator.relays.render.common import MANAGED_BY
from relay_operator.settings import Settings
from smtp_relay.config.spec import API_GROUP, API_VERSION

SETTINGS = Settings.from_env()
RELAYS = (API_GROUP, API_VERSION, "smtprelays")
ANNOTATIONS_PREFIX = "operator.relayfleet.io"

LoginFn = Callable[..., Any]
_login_override: LoginFn | None = None
_clients: dict[int, tuple[asyncio.AbstractEventLoop, Kube]] = {}


def set_login(fn: LoginFn | None) -> None:
    """Replace kopf's usual login (kubeconfig / service account), e.g. with a test emulator's."""
    global _login_override
    _login_override = fn


async def _login_info(**kwargs: Any) -> Any:
    if _login_override is not None:
        info = _login_override(**kwargs)
        return await info if isinstance(info, Awaitable) else info
    return kopf.login_via_client(**{"settings": kopf.OperatorSettings(), **kwargs})  # kubeconfig or in-cluster


async def _client() -> Kube:
    """One Kube client per event loop (kopf's), logged in like kopf."""
    loop = asyncio.get_running_loop()
    entry = _clients.get(id(loop))
    if entry is None or entry[0] is not loop:

        async def relogin() -> Connection:
            return Connection.from_kopf(await _login_info(logger=logging.getLogger(__name__)))

        kube = Kube(await relogin(), relogin=relogin)
        _clients[id(loop)] = (loop, kube)
        return kube
    return entry[1]


class KopfRecorder:
    """Events on the SmtpRelay through kopf's poster (queued, posted in the background).

    Warnings go out at once. Normal events are collected and posted by `flush`, one per reason
    (e.g. one "Created" naming all five children), so a reconcile costs one event request, not five.
    `kopf.event`, not `kopf.info`: the latter obeys `settings.posting.level`, which is WARNING here so
    that log lines do not become events, and would drop every Normal event.
    """

    def __init__(self, body: Any) -> None:
        self.body = body
        self._normal: dict[str, list[str]] = {}

    def info(self, reason: str, message: str) -> None:
        self._normal.setdefault(reason, []).append(message)

    def warn(self, reason: str, message: str) -> None:
        kopf.warn(self.body, reason=reason, message=message)

    def flush(self) -> None:
        for reason, messages in self._normal.items():
            kopf.event(self.body, type="Normal", reason=reason, message="; ".join(messages))
        self._normal.clear()


async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Progress in annotations (the status belongs to us), quick watches, events only for our own."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATIONS_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # log lines are not events; we post events explicitly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.error_delays = [1, 2, 5, 10, 30]


async def login(**kwargs: Any) -> Any:
    return await _login_info(**kwargs)


async def close_clients(**_: Any) -> None:
    loop = asyncio.get_running_loop()
    entry = _clients.pop(id(loop), None)
    if entry is not None:
        await entry[1].close()


def _degraded(body: kopf.Body) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Degraded" and c.get("status") == "True" for c in conditions)


def _owner_name(body: kopf.Body) -> str | None:
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "SmtpRelay" and ref.get("controller"):
            return str(ref.get("name"))
    return None


def _deletes_claims(spec: kopf.Spec, **_: Any) -> bool:
    """Only a relay whose claims go with it needs the deletion handler, and so kopf's finalizer: the
    others are deleted without waiting for us (one request and one event round trip less each)."""
    return bool((spec.get("queue") or {}).get("deleteClaimsOnDelete"))


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Register every handler on `registry` (kopf's default one on import; a test may use its own)."""

    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.on.cleanup(registry=registry)(close_clients)

    @kopf.on.resume(*RELAYS, registry=registry)
    @kopf.on.create(*RELAYS, registry=registry)
    @kopf.on.update(*RELAYS, registry=registry)
    async def relay_changed(body: kopf.Body, patch: kopf.Patch, reason: str, logger: kopf.Logger, **_: Any) -> None:
        """Reconcile. The status goes into kopf's own patch (written with its progress annotations)
        rather than a PATCH of ours during the handler: that one would produce a watch event without
        kopf's last-handled annotation, which kopf, when its watch lags by more than
        `consistency_timeout`, takes for a not yet handled creation and runs this handler again."""
        kube = await _client()
        events = KopfRecorder(body)
        try:
            result = await rec.reconcile(
                body, kube, settings, events, fresh=reason == kopf.Reason.CREATE, write_status_patch=False
            )
        except ApiError as exc:
            if exc.status in (409, 429) or exc.status >= 500:
                raise kopf.TemporaryError(str(exc), delay=2) from exc
            raise
        finally:
            events.flush()
        if result.status_changed:
            patch.status.update(result.status)
        logger.info("reconciled: changed=%s problems=%d", result.changed, len(result.problems))

    @kopf.timer(*RELAYS, registry=registry, interval=settings.resync_seconds, initial_delay=settings.resync_seconds)
    async def resync(body: kopf.Body, **_: Any) -> None:
        """Periodic refresh; a Degraded relay gets a full reconcile, so a Secret created later heals it."""
        kube = await _client()
        if _degraded(body):
            events = KopfRecorder(body)
            try:
                await rec.reconcile(body, kube, settings, events)
            finally:
                events.flush()
        else:
            await rec.refresh_status(kube, body.metadata.namespace or "default", body.metadata.name or "")

    @kopf.on.event("apps", "v1", "statefulsets", registry=registry, labels={"app.kubernetes.io/managed-by": MANAGED_BY})
    async def statefulset_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        """The StatefulSet's status moved (pods ready, scaled, rolled) or it was deleted by hand."""
        name = _owner_name(body)
        namespace = body.metadata.namespace or "default"
        if name is None:
            return
        if type != "DELETED" and not body.get("status"):
            return  # just created (by us, and the status says so already); no controller has looked yet
        kube = await _client()
        if type == "DELETED":
            relay = await kube.get("SmtpRelay", namespace, name)
            if relay is not None and not relay["metadata"].get("deletionTimestamp"):
                events = KopfRecorder(relay)
                try:
                    await rec.reconcile(relay, kube, settings, events)
                finally:
                    events.flush()
            return
        await rec.refresh_status(kube, namespace, name, statefulset=body)

    @kopf.on.delete(*RELAYS, registry=registry, when=_deletes_claims)
    async def relay_deleted(body: kopf.Body, **_: Any) -> None:
        """Children go with the ownerReferences; spool PVCs only when spec.queue.deleteClaimsOnDelete."""
        events = KopfRecorder(body)
        try:
            await rec.delete_claims(body, await _client(), events)
        finally:
            events.flush()


register(kopf.get_default_registry(), SETTINGS)
