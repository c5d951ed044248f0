"""`smtp-relay run --workers N`: N relay processes sharing the SMTP ports, under one small supervisor.

One relay process is CPU-bound on one event loop; two processes on two cores serve about twice the
load. The supervisor serves no SMTP itself: it starts N workers (`python -m smtp_relay.cli run` with
`--reuse-port`, so the kernel spreads connections over their listeners), each with its own spool
`SPOOL/worker-<i>` (a spool is one process's: it holds a flock), and keeps them running.

- HTTP: the supervisor serves the public admin port (`--host`/`--http-port`); each worker serves its own
  on 127.0.0.1 and a free port it writes to `SPOOL/worker-<i>/http-port` once started. /metrics merges
  the workers' figures (counters, histograms and most gauges add up; "oldest" gauges and
  `smtp_relay_draining` take the maximum), /queue adds their queues up, /readyz is 200 only when every
  worker is ready and nothing drains, POST /drain drains all, /quarantine* goes to worker 0.
  The quarantine and capture Maildirs stay shared under SPOOL (`--shared-dir`).
- Signals: SIGTERM/SIGINT are forwarded; every worker drains within `--grace` and the supervisor exits
  0 once all are gone (1 if one failed). SIGHUP is forwarded (each worker reloads).
- A worker that dies is restarted on its own spool after a backoff, so the mail it accepted is
  recovered and delivered. A worker that fails before the fleet first became ready fails the start
  (exit 1, as a single relay that cannot bind its port).
- No stranded mail: a spool that is no longer any worker's (`SPOOL/worker-<j>` for j >= N after the
  fleet was scaled down, `SPOOL` itself after running with `--workers 1`, or the `worker-<i>` spools
  when going back to one worker) gets a deliver-only worker (`--no-listen`) that delivers what is in
  it and exits. With `--workers 1` the supervisor only exists while such spools hold mail; otherwise
  `smtp-relay run` is the single relay process it always was, on `SPOOL` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from smtp_relay.admin.http import AdminServer
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

PORT_FILE = "http-port"
_WORKER_DIR = re.compile(r"^worker-(\d+)$")
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 30.0
"""A worker that ran this long before dying is restarted after the shortest backoff again."""


@dataclass(frozen=True)
class SupervisorOptions:
    """What the supervisor passes on to its workers (from `smtp-relay run`)."""

    manifest: Path
    secrets_dir: Path | None
    spool_dir: Path
    workers: int
    host: str = "127.0.0.1"
    http_port: int = 9025
    hostname: str = ""
    grace: float = 300.0
    log_level: str = "INFO"


def worker_spool(root: Path, index: int, workers: int) -> Path:
    """Spool of listening worker `index`: SPOOL itself for a lone worker, else SPOOL/worker-<index>."""
    return root if workers == 1 else root / f"worker-{index}"


def _holds_mail(spool: Path) -> bool:
    """Whether a spool has segments left (it may still hold undelivered mail)."""
    queue = spool / "queue"
    return queue.is_dir() and any(queue.glob("seg-*.dat"))


def orphan_spools(root: Path, workers: int) -> list[Path]:
    """Spools under `root` that hold mail but belong to none of the `workers` listening workers."""
    if not root.is_dir():
        return []
    mine = {worker_spool(root, i, workers) for i in range(workers)}
    found = [root, *sorted((p for p in root.iterdir() if _WORKER_DIR.match(p.name)), key=lambda p: p.name)]
    return [p for p in found if p not in mine and _holds_mail(p)]


def needs_supervisor(root: Path, workers: int) -> bool:
    """N > 1, or spools of an earlier layout still hold mail that a single relay would not deliver."""
    return workers > 1 or bool(orphan_spools(root, workers))


# --- merging the workers' figures ------------------------------------------------------------------


def _combine(family: str, sample: str) -> Callable[[float, float], float]:
    if sample.endswith("_created"):
        return min  # the fleet's counter exists since its first worker's
    if "oldest" in family or family == "smtp_relay_draining":
        return max
    return lambda a, b: a + b


class _Fixed(Collector):
    """A collector returning families computed beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_metrics(texts: Iterable[str]) -> bytes:
    """Merge Prometheus text expositions: samples with the same name and labels are combined
    (summed; max for "oldest" gauges and `smtp_relay_draining`; min for `_created`)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            if merged.type != family.type:
                log.warning("metric %s is a %s here but a %s elsewhere: skipped", family.name, family.type, merged.type)
                continue
            acc = values.setdefault(family.name, {})  # insertion order keeps histogram buckets in order
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                acc[key] = _combine(family.name, sample.name)(acc[key], sample.value) if key in acc else sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values.get(name, {}).items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


def merge_queues(figures: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add queue figures up; "oldest" ages take the maximum."""
    out: dict[str, Any] = {}
    for queue in figures:
        for key, value in queue.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key not in out:
                out[key] = value
            else:
                out[key] = max(out[key], value) if "oldest" in key else out[key] + value
    return out


# --- the workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    """One relay process the supervisor keeps running (or, deliver-only, runs until its spool is empty)."""

    name: str
    spool: Path
    listen: bool
    proc: asyncio.subprocess.Process | None = None
    port: int | None = None
    """Its admin HTTP port on 127.0.0.1, known once it started; None while (re)starting."""
    started_once: bool = False
    finished: bool = False
    """Deliver-only and done: its spool is empty."""
    restarts: int = 0
    returncode: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def port_file(self) -> Path:
        return self.spool / PORT_FILE


class Supervisor:
    """Starts, watches, restarts and stops the workers; serves the merged admin HTTP."""

    def __init__(self, options: SupervisorOptions) -> None:
        self.options = options
        root = options.spool_dir
        self.workers = [Worker(str(i), worker_spool(root, i, options.workers), True) for i in range(options.workers)]
        for spool in orphan_spools(root, options.workers):
            label = spool.name if spool != root else "spool"
            self.workers.append(Worker(f"drain-{label}", spool, False))
        self.metrics = RelayMetrics()
        self.restarts = Counter(
            "smtp_relay_worker_restarts",
            "Worker processes restarted after they died.",
            ["worker"],
            registry=self.metrics.registry,
        )
        self.running = Gauge(
            "smtp_relay_worker_processes",
            "Worker processes running, by mode.",
            ["mode"],
            registry=self.metrics.registry,
        )
        self.admin = _SupervisorAdmin(self, options.host, options.http_port)
        self._stop = asyncio.Event()
        self._draining = False
        self._fleet_started = False
        self._fleet_up = asyncio.Event()
        """Set once every listening worker has started (the first time)."""
        self._start_failure: int | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then stop the workers; the exit code (0 if every worker ended well)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        self.options.spool_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            await self.admin.start()
            for worker in self.workers:
                worker.task = asyncio.create_task(self._keep(worker), name=f"worker-{worker.name}")
            waiting = asyncio.create_task(self._stop.wait())
            fleet = asyncio.create_task(self._fleet_up.wait())
            await asyncio.wait({waiting, fleet}, return_when=asyncio.FIRST_COMPLETED)
            fleet.cancel()
            if not self._stop.is_set():
                self._fleet_started = True
                log.info(
                    "supervisor: %d worker(s) serving, http on %s:%s (%d deliver-only)",
                    self.options.workers,
                    self.options.host,
                    self.admin.port,
                    sum(not w.listen for w in self.workers),
                )
            await waiting
            await self._stop_workers()
        finally:
            await self.admin.close()
            await self._session.close()
        if self._start_failure is not None:
            return self._start_failure
        failed = [w for w in self.workers if not w.finished and w.returncode not in (0, None)]
        for worker in failed:
            log.error("worker %s ended with exit code %s", worker.name, worker.returncode)
        return 1 if failed else 0

    def _command(self, worker: Worker) -> list[str]:
        o = self.options
        command = [
            sys.executable,
            "-m",
            "smtp_relay.cli",
            "run",
            "-f",
            str(o.manifest),
            "--spool",
            str(worker.spool),
            "--host",
            o.host,
            "--http-host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--port-file",
            str(worker.port_file),
            "--shared-dir",
            str(o.spool_dir),
            "--grace",
            str(o.grace),
            "--log-level",
            o.log_level,
            "--workers",
            "1",
            "--worker-index",
            worker.name,
            "--parent-pid",
            str(os.getpid()),
            "--reuse-port" if worker.listen else "--no-listen",
        ]
        if o.hostname:
            command += ["--hostname", o.hostname]
        if o.secrets_dir is not None:
            command += ["--secrets-dir", str(o.secrets_dir)]
        return command

    async def _keep(self, worker: Worker) -> None:
        """Run one worker until the supervisor stops (or, deliver-only, until its spool is empty)."""
        backoff = _BACKOFF_FIRST
        mode = "listen" if worker.listen else "deliver-only"
        while not self._stop.is_set():
            worker.spool.mkdir(parents=True, exist_ok=True)
            worker.port_file.unlink(missing_ok=True)
            proc = await asyncio.create_subprocess_exec(*self._command(worker), stdin=asyncio.subprocess.DEVNULL)
            worker.proc, started = proc, time.monotonic()
            self.running.labels(mode=mode).inc()
            if self._stop.is_set():
                proc.send_signal(signal.SIGTERM)  # the stop came while it was being started
            exited = asyncio.create_task(proc.wait())
            while worker.port is None and not exited.done():
                worker.port = _read_port(worker.port_file)
                if worker.port is None:
                    await asyncio.wait({exited}, timeout=0.05)
            if worker.port is not None:
                worker.started_once = True
                log.info("worker %s (pid %d) started, http on 127.0.0.1:%d", worker.name, proc.pid, worker.port)
                if all(w.port is not None for w in self.workers if w.listen):
                    self._fleet_up.set()
                if self._draining:
                    await self._call(worker, "POST", "/drain")
            worker.returncode = await exited
            if worker.port is None and worker.returncode == -signal.SIGTERM and self._stop.is_set():
                worker.returncode = 0  # stopped before it had set up its handlers: it had taken nothing yet
            worker.proc = worker.port = None
            self.running.labels(mode=mode).dec()
            if self._stop.is_set():
                return
            if not worker.listen and worker.returncode == 0:
                worker.finished = True
                log.info("worker %s delivered everything in %s and ended", worker.name, worker.spool)
                return
            if worker.listen and not self._fleet_started and not worker.started_once:
                log.error("worker %s failed to start (exit code %s)", worker.name, worker.returncode)
                self._start_failure = worker.returncode if worker.returncode and worker.returncode > 0 else 1
                self._stop.set()
                return
            if time.monotonic() - started > _STABLE_AFTER:
                backoff = _BACKOFF_FIRST
            log.error(
                "worker %s (pid %d) died with exit code %s; restarting in %.1fs on %s",
                worker.name,
                proc.pid,
                worker.returncode,
                backoff,
                worker.spool,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            if not self._stop.is_set():
                worker.restarts += 1
                self.restarts.labels(worker=worker.name).inc()

    async def _stop_workers(self) -> None:
        """Forward SIGTERM, wait for every worker to drain and exit; SIGKILL any that outlives its grace."""
        log.info("supervisor: stopping %d worker(s)", sum(w.proc is not None for w in self.workers))
        self._signal_all(signal.SIGTERM)
        tasks = {w.task for w in self.workers if w.task is not None}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.options.grace + 60.0)
        if late:
            log.error("supervisor: %d worker(s) did not stop in time: SIGKILL", len(late))
            self._signal_all(signal.SIGKILL)
            await asyncio.wait(late)

    def _signal_all(self, sig: signal.Signals, started_only: bool = False) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None and (worker.port or not started_only):
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def _forward_hup(self) -> None:
        log.info("supervisor: SIGHUP, the workers reload")
        self._signal_all(signal.SIGHUP, started_only=True)  # before its handler is set, SIGHUP would kill it

    # -- talking to the workers ---------------------------------------------------------------------

    async def _call(
        self,
        worker: Worker,
        method: str,
        path: str,
        body: bytes | None = None,
    ) -> tuple[int, bytes, str] | None:
        """One HTTP request to a worker's admin port; None when it is not up."""
        if worker.port is None or self._session is None:
            return None
        try:
            async with self._session.request(method, f"http://127.0.0.1:{worker.port}{path}", data=body) as reply:
                return reply.status, await reply.read(), reply.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:  # it is stopping or restarting: its figures are missing
            log.debug("worker %s: %s %s failed: %s", worker.name, method, path, exc)
            return None

    async def _json_from_all(self, method: str, path: str) -> list[tuple[Worker, dict[str, Any] | None]]:
        replies = await asyncio.gather(*(self._call(w, method, path) for w in self.workers))
        out: list[tuple[Worker, dict[str, Any] | None]] = []
        for worker, reply in zip(self.workers, replies, strict=True):
            data = None
            if reply is not None and reply[0] == 200:
                with contextlib.suppress(ValueError):
                    data = dict(json.loads(reply[1]))
            out.append((worker, data))
        return out

    async def status(self) -> dict[str, Any]:
        """/queue: the summed queue, readiness, and every worker's own figures."""
        answers = await self._json_from_all("GET", "/queue")
        not_ready = [w.name for w, data in answers if w.listen and not (data and data.get("ready"))]
        if self._stop.is_set():
            reason = "stopping"
        elif self._draining:
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
        return {
            "ready": not reason,
            "reason": reason,
            "queue": merge_queues(data.get("queue") or {} for _, data in answers if data),
            "workers": workers,
        }

    async def drain(self) -> Mapping[str, Any]:
        """POST /drain: every worker refuses new mail (421) and keeps delivering; answers what is left."""
        if not self._draining:
            log.info("supervisor: drain, forwarded to every worker")
            self._draining = True
            self.metrics.draining.set(1)
        answers = await self._json_from_all("POST", "/drain")
        return {"draining": True, "queue": merge_queues(data.get("queue") or {} for _, data in answers if data)}

    async def metrics_text(self) -> bytes:
        replies = await asyncio.gather(*(self._call(w, "GET", "/metrics") for w in self.workers))
        texts = [generate_latest(self.metrics.registry).decode()]
        texts += [reply[1].decode() for reply in replies if reply is not None and reply[0] == 200]
        return merge_metrics(texts)

    async def proxy_to_first(self, request: web.Request) -> web.Response:
        """/quarantine*: served by worker 0 (the quarantine folder is shared, a release goes to its spool)."""
        reply = await self._call(self.workers[0], request.method, request.path_qs, await request.read())
        if reply is None:
            return web.Response(status=503, text="worker 0 is not running, try again\n")
        status, body, content_type = reply
        return web.Response(status=status, body=body, content_type=content_type)

    def add_proxy_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/quarantine", self.proxy_to_first)
        app.router.add_route("*", "/quarantine/{tail:.*}", self.proxy_to_first)


def _read_port(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class _SupervisorAdmin(AdminServer):
    """admin.py's server with the fleet's figures: /metrics, /readyz and /queue ask the workers."""

    def __init__(self, supervisor: Supervisor, host: str, port: int) -> None:
        super().__init__(
            supervisor.metrics,
            lambda: {},
            supervisor.drain,
            host=host,
            port=port,
            extra_routes=supervisor.add_proxy_routes,
        )
        self._supervisor = supervisor

    async def _get_metrics(self, request: web.Request) -> web.Response:
        body = await self._supervisor.metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_readyz(self, request: web.Request) -> web.Response:
        status = await self._supervisor.status()
        if status["ready"]:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {status['reason']}\n")

    async def _get_queue(self, request: web.Request) -> web.Response:
        status = await self._supervisor.status()
        return web.Response(text=json.dumps(status) + "\n", content_type="application/json")
