"""kopf's side of the operator: startup settings, login, and one API client per event loop.

The API client is created per event loop from the credentials kopf logged in with, so tests that
run kopf in a thread against an emulator need only provide the login (see `set_login`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import kopf

from relay_operator.kube import ApiError, Connection, Kube
from relay_operator.relays.render.common import MANAGED_BY

ANNOTATIONS_PREFIX = "operator.relayfleet.io"
LAST_HANDLED = f"{ANNOTATIONS_PREFIX}/last-handled-configuration"
"""kopf's diff base: written with the create handler's own patch, so absent while the creation is unhandled."""


def creation_handled(body: Mapping[str, Any]) -> bool:
    """Whether kopf has recorded the relay's creation as handled. Until then nothing but the create handler may
    write the relay: a status PATCH of ours would produce a watch event without kopf's annotation, which kopf,
    its watch lagging (a loaded API server), takes for a creation still to handle and runs the handler again."""
    return LAST_HANDLED in ((body.get("metadata") or {}).get("annotations") or {})


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


async def client() -> Kube:
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


@contextmanager
def retried_when_transient() -> Iterator[None]:
    """An API conflict, throttling or server error becomes kopf's TemporaryError: retried in 2 s
    (without the traceback and the backoff of a handler failure). An API server that did not answer
    in time, or could not be reached, is given `UNREACHABLE_RETRY_SECONDS` (a loaded server needs room,
    but not kopf's 60 s for an unknown failure), also logged as one line."""
    try:
        yield
    except ApiError as exc:
        if exc.status in (409, 429) or exc.status >= 500:
            raise kopf.TemporaryError(str(exc), delay=2) from exc
        raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        why = f"the API server did not answer: {exc or type(exc).__name__}"
        raise kopf.TemporaryError(why, delay=UNREACHABLE_RETRY_SECONDS) from exc


UNREACHABLE_RETRY_SECONDS = 10


MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
"""The label selector of every child watch: only the operator's own children are streamed."""


def configure_with(children: list[tuple[str, str, str]]) -> Callable[..., Awaitable[None]]:
    """kopf's startup settings, with a server-side label selector on each child kind in `children`."""

    async def configure_all(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        await configure(settings, **kwargs)
        for group, version, plural in children:
            settings.watching.label_selectors[group, version, plural] = MANAGED_SELECTOR
        await ensure_peering(settings)

    return configure_all


async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Progress in annotations (the status belongs to us), quick watches, events only for our own."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key=LAST_HANDLED.split("/", 1)[1]
    )
    settings.persistence.finalizer = f"{ANNOTATIONS_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # log lines are not events; we post events explicitly
    # Resources are discovered once at startup (the chart installs the CRDs before the operator), so the
    # operator needs no list/watch on CustomResourceDefinitions or Namespaces: least privilege.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.error_delays = [1, 2, 5, 10, 30]


async def ensure_peering(settings: kopf.OperatorSettings) -> None:
    """With `--peering NAME`: peer cluster-wide through the ClusterKopfPeering NAME, created here if absent.

    kopf pauses a peered operator until it sees its peering object, and never creates one; a chart cannot
    template it beside the CRD that defines it (Helm maps every object before applying any), so the operator
    makes its own. Cluster-wide also under --namespace: one object per release, whatever the watch scope.
    """
    if settings.peering.standalone or not settings.peering.mandatory:
        return
    settings.peering.clusterwide = True
    name = settings.peering.name
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        await (await client()).create(body)
    except ApiError as exc:
        if exc.status == 409:
            return  # another pod (or an earlier start) made it
        await close_clients()  # the operator exits: kopf runs no cleanup after a failed startup
        raise kopf.PermanentError(
            f"cannot create ClusterKopfPeering {name!r} for --peering: {exc} (the chart installs its CRD"
            " clusterkopfpeerings.kopf.dev unless peering.installCRD is false, and grants create on it)"
        ) from exc


async def login(**kwargs: Any) -> Any:
    return await _login_info(**kwargs)


async def close_clients(**_: Any) -> None:
    loop = asyncio.get_running_loop()
    entry = _clients.pop(id(loop), None)
    if entry is not None:
        await entry[1].close()


def register(registry: kopf.OperatorRegistry, children: list[tuple[str, str, str]]) -> None:
    """Startup settings (label selectors for the `children` watches), login and the clients' cleanup."""
    kopf.on.startup(registry=registry, id="configure")(configure_with(children))
    kopf.on.login(registry=registry)(login)
    kopf.on.cleanup(registry=registry)(close_clients)
