"""kopf's side of the operator's metrics (`relay_operator.metrics`): the decorator that counts and times each
handler run, the watches that keep the book of statuses, and /metrics served from kopf's own event loop.

The book is filled from watch events on SmtpRelays and SendingDomains, which kopf streams for the operator's
handlers anyway: the statuses the operator wrote, as the API holds them, with no API call of ours. The server
runs in kopf's loop (aiohttp, like the relays' admin port); a scrape's text is formatted in a worker thread, since
at hundreds of objects that takes long enough to delay the handlers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay_operator.metrics import OperatorMetrics
from relay_operator.settings import Settings
from smtp_relay.config.spec import API_GROUP, API_VERSION

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
WATCHED = {"SmtpRelay": "smtprelays", "SendingDomain": "sendingdomains"}
"""The kinds the book keeps, and their plurals."""


def instrumented(
    metrics: OperatorMetrics, kind: str
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Count and time every run of the decorated handler, under its own name. functools.wraps keeps kopf's
    handler id (it follows __wrapped__), so the progress annotations of handled objects stay valid.

    A kopf.TemporaryError is a retry (an error only when it wraps one: a conflict, throttling); any other
    exception is an error by its type; a cancelled run (the operator stopping) is not counted."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        name = fn.__name__

        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                value = await fn(*args, **kwargs)
            except kopf.TemporaryError as exc:
                cause = exc.__cause__
                error = type(cause).__name__ if cause is not None else ""
                metrics.observe(kind, name, "retry", time.perf_counter() - started, error)
                raise
            except Exception as exc:
                metrics.observe(kind, name, "error", time.perf_counter() - started, type(exc).__name__)
                raise
            metrics.observe(kind, name, "success", time.perf_counter() - started)
            return value

        return run

    return wrap


class MetricsEndpoint:
    """The operator's /metrics on `host:port` (0: a free port, then `port` is the one bound)."""

    def __init__(self, metrics: OperatorMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        logger.info("operator metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def register(registry: kopf.OperatorRegistry, settings: Settings, metrics: OperatorMetrics) -> MetricsEndpoint:
    """The watches that keep `metrics.book`, and the /metrics server started and stopped with kopf."""
    endpoint = MetricsEndpoint(metrics, settings.metrics_host, settings.metrics_port)

    def keeper(kind: str) -> Callable[..., Awaitable[None]]:
        async def seen(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            if event.get("type") == "DELETED":
                metrics.book.gone(kind, body.metadata.namespace or "default", body.metadata.name or "")
            else:
                metrics.book.seen(kind, body)

        seen.__qualname__ = seen.__name__ = f"{kind.lower()}_seen_for_metrics"  # its kopf id
        return seen

    for kind, plural in WATCHED.items():
        kopf.on.event(API_GROUP, API_VERSION, plural, registry=registry)(keeper(kind))

    @kopf.on.startup(registry=registry, id="serve_metrics")
    async def serve_metrics(**_: Any) -> None:
        await endpoint.start()

    @kopf.on.cleanup(registry=registry, id="stop_metrics")
    async def stop_metrics(**_: Any) -> None:
        await endpoint.stop()

    return endpoint
