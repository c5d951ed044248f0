"""The supervisor's HTTP side: the fleet's public admin port, answered by asking every worker.

Each worker serves its own admin HTTP on 127.0.0.1 (the port in its port file); the supervisor serves
the public one (`--host`/`--http-port`) with the relay's routes, but fleet-wide:
- /metrics merges the workers' expositions with the supervisor's own (restarts, processes running);
- /queue adds their queues up and lists every worker; /readyz is 200 only when every listening worker
  is ready and nothing stops or drains;
- POST /drain drains every worker, and each worker (re)started later during the drain, with the same body (the
  peers to hand off to: each worker hands its own spool off); POST /undrain (or DELETE /drain) ends that on every
  worker;
- POST /handoff (a message handed to this pod by a draining one) goes to one listening worker, chosen by the
  message's origin (so a repeated hand-off is recognised as a duplicate), the next one when that worker does not
  answer or refuses (503);
- /quarantine* goes to worker 0: the quarantine folder is shared, a release goes to its spool.

The supervisor checks the admin token like a relay does and sends it on to its workers, which check it
too (their ports are on loopback, but any local process could reach them).

A worker that is stopping or restarting does not answer: its figures are missing from the sums for that
moment, and /readyz says which one is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtp_relay.admin.auth import AdminToken
from smtp_relay.admin.fleet import Worker
from smtp_relay.admin.handoff_wire import origin_of
from smtp_relay.admin.http import AdminServer
from smtp_relay.admin.merging import merge_metrics, merge_queues
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

MAX_HANDOFF_BYTES = 1024 * 1024 * 1024
"""A hand-off body the supervisor reads at most before a worker applies the config's limit."""

WorkerReply = tuple[int, bytes, str]
"""Status, body and content type of a worker's answer."""


class WorkerClient:
    """HTTP requests to the workers' admin ports (one client session for the supervisor's life)."""

    def __init__(self, token: AdminToken) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._token = token

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, worker: Worker, method: str, path: str, body: bytes | None = None) -> WorkerReply | None:
        """One HTTP request to a worker's admin port; None when it is not up."""
        if worker.port is None or self._session is None:
            return None
        try:
            url = f"http://127.0.0.1:{worker.port}{path}"
            async with self._session.request(method, url, data=body, headers=self._token.header()) as reply:
                return reply.status, await reply.read(), reply.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:  # it is stopping or restarting: its figures are missing
            log.debug("worker %s: %s %s failed: %s", worker.name, method, path, exc)
            return None

    async def json_from_each(
        self, workers: Sequence[Worker], method: str, path: str, body: bytes | None = None
    ) -> list[tuple[Worker, dict[str, Any] | None]]:
        """Every worker's JSON answer, asked at once; None for one that did not answer 200 with JSON."""
        replies = await asyncio.gather(*(self.request(w, method, path, body) for w in workers))
        out: list[tuple[Worker, dict[str, Any] | None]] = []
        for worker, reply in zip(workers, replies, strict=True):
            data = None
            if reply is not None and reply[0] == 200:
                with contextlib.suppress(ValueError):
                    data = dict(json.loads(reply[1]))
            out.append((worker, data))
        return out


class SupervisorAdmin(AdminServer):
    """The relay's admin server with the fleet's figures: /metrics, /readyz, /queue and /drain ask the workers."""

    def __init__(
        self,
        workers: Sequence[Worker],
        metrics: RelayMetrics,
        stopping: Callable[[], bool],
        *,
        token: AdminToken,
        host: str,
        port: int,
        drain_liveness_timeout: float = 3600.0,
    ) -> None:
        # No local status: the /readyz and /queue handlers are overridden below, they ask the workers.
        super().__init__(
            metrics,
            lambda: {},
            self.drain,
            self.undrain,
            token=token,
            host=host,
            port=port,
            drain_liveness_timeout=drain_liveness_timeout,
            extra_routes=self._add_quarantine_proxy,
        )
        self._workers = workers
        self._stopping = stopping
        self._client = WorkerClient(token)
        self.draining = False
        """Set by the first POST /drain; a worker started from then on is drained as soon as it serves."""
        self._drain_body = b""
        """The peers of the last POST /drain that named them, as the workers get them."""

    async def start(self) -> None:
        await self._client.open()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self._client.close()

    async def drain_if_draining(self, worker: Worker) -> None:
        """A worker (re)started during a drain drains too."""
        if self.draining:
            await self._client.request(worker, "POST", "/drain", self._drain_body or None)

    async def fleet_status(self) -> dict[str, Any]:
        """/queue: the summed queue, readiness, and every worker's own figures."""
        answers = await self._client.json_from_each(self._workers, "GET", "/queue")
        not_ready = [w.name for w, data in answers if w.listen and not (data and data.get("ready"))]
        if self._stopping():
            reason = "stopping"
        elif self.draining:
            reason = "draining"
        else:
            reason = f"worker(s) {', '.join(not_ready)} not ready" if not_ready else ""
        workers = [
            {
                "name": w.name,
                "pid": w.proc.pid if w.proc else None,
                "listen": w.listen,
                "restarts": w.restarts,
                "ready": bool(data and data.get("ready")),
                "finished": w.finished,
                "queue": (data or {}).get("queue"),
            }
            for w, data in answers
        ]
        digests = {((data or {}).get("config") or {}).get("digest", "") for _, data in answers}
        return {
            "ready": not reason,
            "reason": reason,
            "queue": merge_queues(data.get("queue") or {} for _, data in answers if data),
            # the workers' common config; empty while they differ (one of them has not reloaded yet)
            "config": {"digest": digests.pop() if len(digests) == 1 else ""},
            "workers": workers,
        }

    async def drain(self, peers: list[str] | None = None) -> Mapping[str, Any]:
        """POST /drain: every worker refuses new mail (421), keeps delivering and hands off to `peers`; answers
        what is left."""
        if not self.draining:
            log.info("supervisor: drain, forwarded to every worker")
            self.draining = True
            self._metrics.draining.set(1)
        if peers is not None:
            self._drain_body = json.dumps({"peers": peers}).encode()
        answers = await self._client.json_from_each(self._workers, "POST", "/drain", self._drain_body or None)
        queue = merge_queues(data.get("queue") or {} for _, data in answers if data)
        sessions = sum(int(data.get("sessions") or 0) for _, data in answers if data)
        handoff = merge_queues(data.get("handoff") or {} for _, data in answers if data)
        answer: dict[str, Any] = {"draining": True, "queue": queue, "sessions": sessions, "handoff": handoff}
        # a worker restarting (or hung) did not say what its spool holds: the sum above leaves it out, so the
        # answer names it and nobody may read this relay as empty (the operator waits for it)
        silent = [w.name for w, data in answers if data is None and not w.finished]
        if silent:
            answer["unanswered"] = silent
        return answer

    async def undrain(self) -> Mapping[str, Any]:
        """POST /undrain: every worker accepts again (unless the supervisor is stopping)."""
        if self._stopping():
            return {"draining": True, "reason": "stopping"}
        if self.draining:
            log.info("supervisor: undrain, forwarded to every worker")
            self.draining = False
            self._drain_body = b""  # the next drain names its peers anew
            self._metrics.draining.set(0)
        answers = await self._client.json_from_each(self._workers, "POST", "/undrain")
        return {"draining": False, "queue": merge_queues(data.get("queue") or {} for _, data in answers if data)}

    async def merged_metrics(self) -> bytes:
        """The supervisor's own figures and every answering worker's, merged into one exposition."""
        replies = await asyncio.gather(*(self._client.request(w, "GET", "/metrics") for w in self._workers))
        texts = [generate_latest(self._metrics.registry).decode()]
        texts += [reply[1].decode() for reply in replies if reply is not None and reply[0] == 200]
        return merge_metrics(texts)

    def _add_quarantine_proxy(self, app: web.Application) -> None:
        app.router.add_route("*", "/quarantine", self._proxy_to_worker_0)
        app.router.add_route("*", "/quarantine/{tail:.*}", self._proxy_to_worker_0)
        app.router.add_post("/handoff", self._handoff_to_a_worker)

    async def _handoff_to_a_worker(self, request: web.Request) -> web.Response:
        """POST /handoff: to the listening worker its origin maps to (so a repeat meets the worker that knows it);
        the next when that one is down or refuses (503). The worker checks everything else."""
        if self.draining or self._stopping():
            return web.Response(status=503, text="hand-off refused: this relay is draining\n")
        length = request.content_length
        if length is None:
            return web.Response(status=411, text="bad hand-off: Content-Length is required\n")
        if length > MAX_HANDOFF_BYTES:  # the worker checks the config's limit; this one only bounds memory
            return web.Response(status=413, text=f"bad hand-off: {length} bytes is more than this relay takes\n")
        body = await request.content.readexactly(length)
        listening = [w for w in self._workers if w.listen]
        first = zlib.crc32(origin_of(body).encode())  # one origin, one worker: its duplicates are recognised
        reply = None
        for i in range(len(listening)):
            worker = listening[(first + i) % len(listening)]
            reply = await self._client.request(worker, "POST", "/handoff", body)
            if reply is not None and reply[0] != 503:
                break
        if reply is None:
            return web.Response(status=503, text="hand-off refused: no worker is running, try again\n")
        status, text, content_type = reply
        return web.Response(status=status, body=text, content_type=content_type)

    async def _proxy_to_worker_0(self, request: web.Request) -> web.Response:
        """/quarantine*: served by worker 0 (the quarantine folder is shared, a release goes to its spool)."""
        reply = await self._client.request(self._workers[0], request.method, request.path_qs, await request.read())
        if reply is None:
            return web.Response(status=503, text="worker 0 is not running, try again\n")
        status, body, content_type = reply
        return web.Response(status=status, body=body, content_type=content_type)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        body = await self.merged_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_readyz(self, request: web.Request) -> web.Response:
        status = await self.fleet_status()
        if status["ready"]:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {status['reason']}\n")

    async def _get_queue(self, request: web.Request) -> web.Response:
        status = await self.fleet_status()
        return web.Response(text=json.dumps(status) + "\n", content_type="application/json")
