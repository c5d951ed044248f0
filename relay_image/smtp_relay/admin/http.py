"""The relay's HTTP side: Prometheus metrics, health probes, the queue and drain/undrain.

Kept separate from SMTP so probes keep answering while the SMTP side is draining or overloaded:
`/readyz` turns 503 as soon as a drain starts, so Kubernetes stops sending new connections while
`/livez` stays 200 and the pod is not restarted in the middle of delivering its queue. A drain asked
over HTTP is reversible (`POST /undrain` or `DELETE /drain`); one that nobody undoes turns `/livez` to
503 after `drain_liveness_timeout`, so a mistaken drain restarts the relay (which starts undrained)
instead of leaving it refusing mail for good. Everything but health and metrics needs the admin token
(`admin.auth`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtp_relay.admin.auth import AdminToken, auth_middleware
from smtp_relay.admin.handoff_wire import HandoffError, parse_drain_body
from smtp_relay.telemetry.metrics import RelayMetrics

DrainFn = Callable[[list[str] | None], Awaitable[Mapping[str, Any]]]
"""Starts a drain (idempotent), handing off to the peers named (None: as before), and returns what is left."""
UndrainFn = Callable[[], Awaitable[Mapping[str, Any]]]
"""Ends a drain asked over HTTP (idempotent): the relay accepts mail again."""
StatusFn = Callable[[], Mapping[str, Any]]
"""Returns the queue figures and readiness, for /readyz and /queue."""


class AdminServer:
    """aiohttp server for /metrics, /livez, /readyz, /queue, POST /drain (optionally naming the peers to hand the
    queue off to: admin.handoff_send) and POST /undrain."""

    def __init__(
        self,
        metrics: RelayMetrics,
        status: StatusFn,
        drain: DrainFn,
        undrain: UndrainFn,
        *,
        token: AdminToken,
        host: str = "127.0.0.1",
        port: int = 9025,
        drain_liveness_timeout: float = 3600.0,
        extra_routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self._extra_routes = extra_routes
        self._token = token
        self._undrain = undrain
        self._drain_liveness_timeout = drain_liveness_timeout
        self._drained_since: tuple[float, float] | None = None
        """(wall clock, monotonic) of the POST /drain in effect; None when no HTTP drain is."""
        self._metrics = metrics
        self._status = status
        self._drain = drain
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[auth_middleware(self._token)])
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/livez", self._get_livez)
        app.router.add_get("/readyz", self._get_readyz)
        app.router.add_get("/queue", self._get_queue)
        app.router.add_post("/drain", self._post_drain)
        app.router.add_post("/undrain", self._post_undrain)
        app.router.add_delete("/drain", self._post_undrain)
        if self._extra_routes is not None:
            self._extra_routes(app)  # the quarantine API (the supervisor: its proxy to worker 0)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real port when 0 was asked for

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_livez(self, request: web.Request) -> web.Response:
        if self._drained_since is None:
            return web.Response(text="ok\n")
        wall, started = self._drained_since
        age = time.monotonic() - started
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
        why = f"drained by POST /drain since {since} ({age:.0f} s); POST /undrain resumes"
        if 0 < self._drain_liveness_timeout <= age:
            limit = f"over the drain liveness timeout of {self._drain_liveness_timeout:g} s"
            return web.Response(status=503, text=f"not live: {why}; {limit}\n")
        return web.Response(text=f"ok: {why}\n")

    async def _get_readyz(self, request: web.Request) -> web.Response:
        status = self._status()
        if status.get("ready"):
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {status.get('reason', 'starting')}\n")

    async def _get_queue(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(dict(self._status())) + "\n", content_type="application/json")

    async def _post_drain(self, request: web.Request) -> web.Response:
        try:
            peers = parse_drain_body(await request.read())
        except HandoffError as exc:
            return web.Response(status=400, text=f"bad drain request: {exc}\n")
        left = await self._drain(peers)
        if self._drained_since is None:
            self._drained_since = (time.time(), time.monotonic())
        return web.Response(text=json.dumps(dict(left)) + "\n", content_type="application/json")

    async def _post_undrain(self, request: web.Request) -> web.Response:
        state = await self._undrain()
        if state.get("draining"):  # stopping (SIGTERM): that drain is not the API's to undo
            return web.Response(status=409, text=json.dumps(dict(state)) + "\n", content_type="application/json")
        self._drained_since = None
        return web.Response(text=json.dumps(dict(state)) + "\n", content_type="application/json")
