"""The relay process: wires listener → spool → scheduler → delivery, and owns its lifecycle.

Lifecycle promises (README "Delivery guarantees"):
- a 250 is given only after `Spool.commit` returned, i.e. after the fdatasync of the batch;
- on start everything left in the spool is scheduled again;
- SIGTERM (or POST /drain) stops accepting (421), lets transactions in flight finish, keeps
  delivering until the queue is empty or the grace period ends, then exits 0 leaving the rest on disk;
- SIGHUP, or a change of the manifest or mounted Secrets, reloads listeners, policy and routes
  without touching the queue; a broken new config is logged and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtp_relay.admin.auth import AdminToken
from smtp_relay.admin.handoff_api import HandoffReceiver, add_handoff_routes
from smtp_relay.admin.handoff_send import HandOff
from smtp_relay.admin.http import AdminServer
from smtp_relay.admin.quarantine_api import add_quarantine_routes
from smtp_relay.cleanup.headers import policy_headers
from smtp_relay.config.manifest import ManifestError
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.source import ConfigSource
from smtp_relay.delivery.deliverer import Deliverer
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.quarantine import QuarantineStore
from smtp_relay.policy.scanners import Scanners
from smtp_relay.queue.scheduler import Scheduler
from smtp_relay.queue.spool.store import Spool
from smtp_relay.queue.stats import QueueStats
from smtp_relay.smtp.server import RelayServer
from smtp_relay.telemetry.metrics import RelayMetrics, counter_total

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayOptions:
    """Process-level settings from the command line (not from the manifest)."""

    spool_dir: Path
    """Root of the spool: queue/ (segments and journal) and capture Maildirs."""
    host: str = "127.0.0.1"
    """Address the SMTP listeners bind to."""
    http_port: int = 9025
    """Port of /metrics, /livez, /readyz, /drain (0 picks a free one)."""
    hostname: str = ""
    """Name in the banner, Received headers and DSNs; default the machine's FQDN."""
    grace: float = 300.0
    """Seconds a drain may keep delivering before exiting with mail left on disk."""
    reload_interval: float = 2.0
    """How often the manifest and mounted Secrets are checked for changes."""
    reuse_port: bool = False
    """Bind listeners with SO_REUSEPORT, so several relay processes can share a port."""
    http_host: str | None = None
    """Address of the HTTP side; default `host` (a supervised worker serves it on loopback only)."""
    shared_dir: Path | None = None
    """Folder of the quarantine and the capture Maildirs; default `spool_dir` (workers share their parent's)."""
    listen: bool = True
    """False: deliver-only, no SMTP listener; the process exits 0 once its spool is empty."""
    port_file: Path | None = None
    """Where to write the real HTTP port once started (the supervisor reads it)."""
    admin_token_file: Path | None = None
    """The admin API's bearer token (admin.auth); None: the protected routes answer 403."""
    drain_liveness_timeout: float = 3600.0
    """Seconds after a POST /drain nobody undid before /livez answers 503 (0: never)."""
    workers: int = 1
    """Relay processes of this pod (`--workers`): with fleet-wide limits, the fallback's divisor with replicas."""


class Relay:
    """One relay process serving one SmtpRelay config."""

    def __init__(self, source: ConfigSource, options: RelayOptions) -> None:
        self.source = source
        self.options = options
        self.hostname = options.hostname or socket.getfqdn()
        self.metrics = RelayMetrics()
        self.config: RelayConfig = source.load()
        self._fingerprint = source.fingerprint()
        self.spool = Spool(options.spool_dir / "queue", active_window=self.config.spec.queue.active_window)
        resolver = make_resolver(self.config.spec.dns)  # the one resolver of every lookup (MX, SPF, DNSBL)
        shared_dir = options.shared_dir or options.spool_dir
        self.deliverer = Deliverer(self.config, resolver, shared_dir, hostname=self.hostname, metrics=self.metrics)
        self.quarantine = QuarantineStore(shared_dir / "quarantine")
        self.policy = PolicyEngine(
            self.config,
            resolver,
            hostname=self.hostname,
            metrics=PolicyMetrics(self.metrics.registry),
            quarantine=self.quarantine,
            scanners=Scanners.from_spec(self.config.spec),
            compose_headers=policy_headers,  # cleanup's headers, handed down: policy never imports cleanup
            workers=options.workers,
        )
        self.deliverer.pace_with(lambda: self.policy.pacing)  # shaping rates fleet-wide with limits in Redis
        self.scheduler = Scheduler(
            self.spool,
            self.deliverer.deliver,
            self.config.spec.queue.retry,
            hostname=self.hostname,
            metrics=self.metrics,
        )
        self.server = RelayServer(
            self.config,
            self.accept,
            host=options.host,
            hostname=self.hostname,
            metrics=self.metrics,
            reuse_port=options.reuse_port,
            policy=self.policy,
        )
        token = AdminToken(options.admin_token_file)
        origin = f"{socket.gethostname()}:{options.spool_dir.resolve()}"  # unique per pod and per worker's spool
        self.handoff = HandOff(self.spool, self.scheduler, self.metrics, token, origin=origin)
        self.handoff_receiver = HandoffReceiver(
            self.spool,
            self.scheduler,
            self.metrics,
            self._handoff_refusal,
            lambda: self.config.spec.policy.max_message_bytes,
        )
        self.admin = AdminServer(
            self.metrics,
            self.status,
            self.start_drain,
            self.end_drain,
            token=token,
            host=options.http_host or options.host,
            port=options.http_port,
            drain_liveness_timeout=options.drain_liveness_timeout,
            extra_routes=self._admin_routes,
        )
        self._ready = False
        self._draining = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def accept(self, envelope: Envelope, data: bytes) -> str:
        """The listener's sink: durable first, then scheduled; the 250 follows this return."""
        started = time.monotonic()
        message = await self.spool.commit(envelope, data)
        self.metrics.commit_latency.observe(time.monotonic() - started)
        self.metrics.received.inc()
        self.metrics.received_bytes.inc(len(data))
        self.scheduler.submit(message)
        return message.id

    def _admin_routes(self, app: Any) -> None:
        add_quarantine_routes(app, self.quarantine, self.accept)
        add_handoff_routes(app, self.handoff_receiver)

    def _handoff_refusal(self) -> str:
        """Why this relay takes no hand-off now ("" when it does): a leaving pod must not collect mail."""
        if self._draining:
            return "this relay is draining: hand off to a relay that stays"
        return "" if self._ready else "this relay is starting"

    def _queue(self) -> dict[str, Any]:
        """The queue figures: the scheduler's, plus what the hand-off holds (still queued here until a peer has it)."""
        return _stats_dict(self.scheduler.stats(), self.handoff.in_flight())

    def status(self) -> Mapping[str, Any]:
        reason = "draining" if self._draining else ("" if self._ready else "starting")
        queue = {**self._queue(), **self._totals()}
        config = {"digest": self.config.digest}
        ready = self._ready and not self._draining
        return {"ready": ready, "reason": reason, "queue": queue, "config": config, "handoff": self.handoff.figures()}

    def _totals(self) -> dict[str, float]:
        """Counters since start and the quarantine's size, for the operator's rates and status.queue."""
        m = self.metrics
        return {
            "received_total": counter_total(m.received),
            "delivered_total": counter_total(m.delivered),
            "delivery_failures_total": counter_total(m.deferred),
            "bounced_total": counter_total(m.bounced),
            "rejected_total": counter_total(m.rejected),
            "quarantined": len(self.quarantine.list()),
            "handed_off_total": counter_total(m.handed_off),
            "handoff_failures_total": counter_total(m.handoff_failures),
            "handoff_received_total": counter_total(m.handoff_received),
            "handoff_duplicates_total": counter_total(m.handoff_duplicates),
        }

    async def start_drain(self, peers: list[str] | None = None) -> Mapping[str, Any]:
        """Stop accepting new mail; delivery goes on, and with `peers` (admin URLs of relays that stay) the queue is
        handed off to them too ([]: hand off no more; None: leave the hand-off as it is). Idempotent; answers what
        is left: the queue (what the hand-off holds included), the hand-off's progress, and the SMTP sessions
        still open, since a transaction in flight may yet commit a message (empty means both are 0)."""
        if not self._draining:
            log.info("drain: refusing new mail with 421, delivering what is queued")
            self._draining = True
            self.metrics.draining.set(1)
            self.server.stop_accepting()
        if peers is not None and not self._stop.is_set():
            if peers:
                self.handoff.start(peers)
            else:
                await self.handoff.stop()
        queue = {**self._queue(), **self._totals()}
        sessions = self.server.active_sessions()
        return {"draining": True, "queue": queue, "sessions": sessions, "handoff": self.handoff.figures()}

    async def end_drain(self) -> Mapping[str, Any]:
        """POST /undrain: accept mail again, unless the process is stopping (then it stays draining)."""
        if self._draining and not self._stop.is_set():
            log.info("undrain: accepting new mail again")
            await self.handoff.stop()
            self._draining = False
            self.metrics.draining.set(0)
            self.server.resume_accepting()
        return {"draining": self._draining, "queue": self._queue()}

    async def start(self) -> None:
        recovered = await self.spool.open()
        for message in recovered:
            self.scheduler.submit(message)
        if recovered:
            log.info("recovered %d message(s) from the spool", len(recovered))
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        if self.options.listen:
            await self.server.start()
        else:
            self._tasks.append(asyncio.create_task(self._stop_when_empty(), name="stop-when-empty"))
        await self.admin.start()
        self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
        # Everything built so far (modules, models, config) lives as long as the process: keep it out
        # of the collector's generations, so the collections that message handling triggers stay small.
        gc.freeze()
        self._ready = True
        if self.options.port_file is not None:
            tmp = self.options.port_file.with_name(self.options.port_file.name + ".tmp")
            tmp.write_text(f"{self.admin.port}\n")
            tmp.replace(self.options.port_file)
        ports = ", ".join(f"{name}={port}" for name, port in self.server.bound_ports().items()) or "deliver-only"
        log.info(
            "relay %s/%s serving on %s (%s), http on %s",
            self.config.namespace,
            self.config.name,
            self.options.host,
            ports,
            self.admin.port,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> bool:
        """Apply a new config to listeners, policy, routes and retries; keep the old one if it is broken."""
        self._fingerprint = await asyncio.to_thread(self.source.fingerprint)
        try:
            config = await asyncio.to_thread(self.source.load)
            self.server.update(config)  # first: it refuses a bad certificate or an unbindable port
        except (ManifestError, ValueError, OSError) as exc:
            log.error("config reload refused, keeping the running config:\n%s", exc)
            return False
        self.config = config
        self.deliverer.update(config)
        self.scheduler.update_retry(config.spec.queue.retry)
        self.spool.active_window = config.spec.queue.active_window
        await self.policy.update(config)
        log.info("config reloaded")
        return True

    async def _stop_when_empty(self) -> None:
        """Deliver-only mode: stop once everything recovered from the spool is delivered or bounced."""
        while True:  # the scheduler has no "empty" event; its stats are cheap
            if not self.scheduler.stats().total and not self.handoff.in_flight():  # handed off: still here until 200
                break
            await asyncio.sleep(0.5)
        log.info("deliver-only: spool %s is empty", self.options.spool_dir)
        self.request_stop()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            if await asyncio.to_thread(self.source.fingerprint) != self._fingerprint:
                await self.reload()

    async def run_until_stopped(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain within the grace period; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._tasks.append(asyncio.create_task(self.reload())))
        await self.start()
        await self._stop.wait()
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        deadline = time.monotonic() + self.options.grace
        await self.start_drain()
        await self.server.wait_idle(max(0.0, min(30.0, deadline - time.monotonic())))
        await self.scheduler.drain(max(0.0, deadline - time.monotonic()))
        await self.handoff.stop()  # what it held goes back: it stays in the spool
        log.info("shutdown: %d message(s) left in the spool for the next start", self.spool.depth())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.scheduler.stop()
        await self.server.close()
        await self.admin.close()
        await self.deliverer.close()
        await self.policy.close()
        await self.spool.close()


def _stats_dict(stats: QueueStats, handing_off: int = 0) -> dict[str, Any]:
    """Queue figures as JSON for /queue and /drain; messages being handed off count as active."""
    figures = {**dataclasses.asdict(stats), "total": stats.total + handing_off}
    figures["active"] += handing_off
    figures["handoff_in_flight"] = handing_off
    return figures
