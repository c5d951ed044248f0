"""The relay's SMTP listeners: binding, reloads that never disturb a session in flight, drain and close.

Each accepted connection becomes a `RelaySession` (see session) with the listener and the config
snapshot of that moment; a reload only changes what the next connections get.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from smtp_relay.cleanup.dkim import DkimSigner
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import Listener
from smtp_relay.policy.admission import Admission
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.smtp.passwords import PasswordChecker, UserTable
from smtp_relay.smtp.session import RelaySession
from smtp_relay.smtp.state import MessageSink, SessionSetup, SessionState
from smtp_relay.smtp.tls import server_context
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger("smtp_relay.smtp")

LISTEN_BACKLOG = 512
"""Connections the kernel queues before accept (capped by net.core.somaxconn); asyncio's default is 100."""


@dataclass
class _Bound:
    listener: Listener
    sock: socket.socket
    server: asyncio.AbstractServer | None = None
    start: asyncio.Task[None] | None = field(default=None, repr=False)


class RelayServer:
    """All SMTP listeners of one relay process, reconfigurable without dropping sessions."""

    def __init__(
        self,
        config: RelayConfig,
        sink: MessageSink,
        *,
        host: str = "127.0.0.1",
        hostname: str = socket.getfqdn(),
        metrics: RelayMetrics | None = None,
        reuse_port: bool = False,
        policy: PolicyEngine | None = None,
    ) -> None:
        self.hostname = hostname
        self.policy = policy
        """The policy chain (SPF, DNSBL, content checks) asked after the admission checks; reloaded in place."""
        self.metrics = metrics or RelayMetrics()
        self._host = host
        self.sink = sink
        """Where sessions commit accepted messages (the spool, in production)."""
        self._reuse_port = reuse_port
        self.passwords = PasswordChecker(self.metrics)
        """AUTH password checks: a small pool shared by every session, across reloads."""
        self._setup = self._build(config)
        self._bound: dict[str, _Bound] = {}
        self._sessions: set[SessionState] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def _build(self, config: RelayConfig) -> SessionSetup:
        needs_tls = any(lst.tls != "none" for lst in config.spec.listeners)
        if needs_tls and config.tls is None:
            raise ValueError("a listener uses TLS but the config has no TLS certificate")
        tls = server_context(config.tls) if config.tls is not None else None
        signer = DkimSigner(config.sending_domains, metrics=self.metrics)  # raises DkimKeyError for a bad key
        return SessionSetup(
            config=config,
            admission=Admission.from_spec(config.spec),
            tls=tls,
            max_size=config.spec.policy.max_message_bytes,
            users=UserTable.from_users(config.users),
            signer=signer if signer.active else None,
        )

    @property
    def admission(self) -> Admission:
        """The checks new sessions will use; the policy chain appends to its lists."""
        return self._setup.admission

    # --- listeners ------------------------------------------------------------------------

    def _bind(self, listener: Listener) -> _Bound:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server(
            (self._host, listener.port), family=family, backlog=LISTEN_BACKLOG, reuse_port=self._reuse_port
        )
        sock.setblocking(False)
        return _Bound(listener=listener, sock=sock)

    async def _serve(self, bound: _Bound) -> None:
        loop = asyncio.get_running_loop()
        bound.server = await loop.create_server(
            lambda: RelaySession(self, bound.listener, self._setup),
            sock=bound.sock,
            backlog=LISTEN_BACKLOG,  # create_server listens again on the socket, with 100 unless told
        )
        log.info(
            "listening name=%s port=%d tls=%s auth=%s",
            bound.listener.name,
            bound.listener.port,
            bound.listener.tls,
            bound.listener.auth,
        )

    async def start(self) -> None:
        """Bind and serve every listener of the spec."""
        for listener in self._setup.config.spec.listeners:
            self._bound[listener.name] = self._bind(listener)
        for bound in self._bound.values():
            await self._serve(bound)

    def bound_ports(self) -> dict[str, int]:
        return {name: int(b.sock.getsockname()[1]) for name, b in self._bound.items()}

    def _unbind(self, bound: _Bound) -> None:
        """Stop listening; sessions of this listener go on until they end."""
        if bound.start is not None and not bound.start.done():
            bound.start.cancel()
        if bound.server is not None:
            bound.server.close()
        bound.sock.close()

    def update(self, config: RelayConfig) -> None:
        """Apply a reload: new sessions get the new config; listeners follow the spec; sessions are untouched.

        Sockets are bound before returning, so bound_ports() is right at once and clients that connect
        before the server task runs wait in the backlog. A bad TLS certificate or DKIM key raises and changes nothing.
        """
        setup = self._build(config)
        self._setup = setup
        wanted = {lst.name: lst for lst in config.spec.listeners}
        for name, bound in list(self._bound.items()):
            new = wanted.get(name)
            if new is None or new.port != bound.listener.port:
                self._unbind(bound)
                del self._bound[name]
            else:
                bound.listener = new
        for name, listener in wanted.items():
            if name not in self._bound:
                bound = self._bind(listener)
                self._bound[name] = bound
                bound.start = asyncio.get_running_loop().create_task(self._serve(bound))

    # --- sessions -------------------------------------------------------------------------

    def session_started(self, session: SessionState) -> None:
        """Called by each session as its socket is accepted: drain waits for it, the gauge counts it."""
        self._sessions.add(session)
        self._idle.clear()
        self.metrics.active_connections.labels(listener=session._listener.name).inc()

    def session_ended(self, session: SessionState) -> None:
        """Called by each session once its socket is closed, however far it got."""
        if session in self._sessions:
            self._sessions.discard(session)
            self.metrics.active_connections.labels(listener=session._listener.name).dec()
        if not self._sessions:
            self._idle.set()

    def active_sessions(self) -> int:
        return len(self._sessions)

    def stop_accepting(self) -> None:
        """Drain: new connections get 421 and sessions get 421 at their next MAIL; DATA in flight finishes."""
        self.draining = True
        self.metrics.draining.set(1)

    def resume_accepting(self) -> None:
        """Undrain: new connections and transactions are accepted again."""
        self.draining = False
        self.metrics.draining.set(0)

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109 (the lead's contract)
        """Return when no session is open, or after timeout seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Stop listening and cut every session (drain first for a graceful stop)."""
        for bound in self._bound.values():
            self._unbind(bound)
        starts = [b.start for b in self._bound.values() if b.start is not None]
        self._bound.clear()
        for task in starts:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self.wait_idle(2.0)
        self.passwords.close()
