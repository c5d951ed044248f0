"""`smtp-relay run --workers N`: N relay processes sharing the SMTP ports, under one small supervisor.

One relay process is CPU-bound on one event loop; two processes on two cores serve about twice the
load. The supervisor serves no SMTP itself: it starts N workers (`python -m smtp_relay.cli run` with
`--reuse-port`, so the kernel spreads connections over their listeners), each with its own spool
(see `fleet`), and keeps them running. Its HTTP side (the fleet's /metrics, /queue, /readyz, /drain) is
`supervisor_http`; the quarantine and capture Maildirs stay shared under SPOOL (`--shared-dir`).

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
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from smtp_relay.admin.auth import AdminToken
from smtp_relay.admin.fleet import Worker, orphan_spools, read_port, worker_spool
from smtp_relay.admin.supervisor_http import SupervisorAdmin
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

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
    admin_token_file: Path | None = None
    """The admin token: the supervisor checks it and sends it to its workers, which check it too."""
    drain_liveness_timeout: float = 3600.0
    """Of the supervisor's /livez after a POST /drain (the workers' own never fail: nobody probes them)."""


class Supervisor:
    """Starts, watches, restarts and stops the workers; `admin` serves the fleet's HTTP."""

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
        self._stop = asyncio.Event()
        self.admin = SupervisorAdmin(
            self.workers,
            self.metrics,
            self._stop.is_set,
            token=AdminToken(options.admin_token_file),
            host=options.host,
            port=options.http_port,
            drain_liveness_timeout=options.drain_liveness_timeout,
        )
        self._fleet_started = False
        self._fleet_up = asyncio.Event()
        """Set once every listening worker has started (the first time)."""
        self._start_failure: int | None = None

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then stop the workers; the exit code (0 if every worker ended well)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        self.options.spool_dir.mkdir(parents=True, exist_ok=True)
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
            "--drain-liveness-timeout",
            "0",
        ]
        if o.admin_token_file is not None:
            command += ["--admin-token-file", str(o.admin_token_file)]
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
                worker.port = read_port(worker.port_file)
                if worker.port is None:
                    await asyncio.wait({exited}, timeout=0.05)
            if worker.port is not None:
                worker.started_once = True
                log.info("worker %s (pid %d) started, http on 127.0.0.1:%d", worker.name, proc.pid, worker.port)
                if all(w.port is not None for w in self.workers if w.listen):
                    self._fleet_up.set()
                await self.admin.drain_if_draining(worker)
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
