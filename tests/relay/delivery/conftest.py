"""Upstreams for the delivery tests, and the small bits of setup the tests share.

Where a plain, accepting or failing upstream will do, the tests use the real smtp-sink
(`smtp_sink_factory` of tests/peers/smtp_sink.py). The one in-process upstream here, an aiosmtpd
server, is for what smtp-sink cannot do: STARTTLS and implicit TLS with our certificate, AUTH that
checks a password, replies scripted per recipient or per message, SMTPUTF8, telling connections
apart, and dropping a connection from the server side. The TLS certificate comes from the shared
throwaway CA of tests/peers/tls.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from smtp_relay.config.manifest import parse_spec
from smtp_relay.config.resolved import Credentials, RelayConfig
from smtp_relay.delivery.deliverer import Deliverer
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.model.envelope import Envelope as RelayEnvelope
from smtp_relay.model.envelope import StoredMessage
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.peers.tls import ThrowawayCA

SERVER_NAME = "smarthost.test"


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for SERVER_NAME and 127.0.0.1."""

    ca_pem: bytes
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@pytest.fixture(scope="session")
def delivery_tls(test_ca: ThrowawayCA) -> TlsFiles:
    """A server certificate for SERVER_NAME and 127.0.0.1 from the session's shared test CA."""
    issued = test_ca.issue((SERVER_NAME, "127.0.0.1"))
    return TlsFiles(ca_pem=test_ca.ca_pem, cert_path=issued.cert_path, key_path=issued.key_path)


@dataclass(frozen=True)
class Received:
    """One transaction as the upstream saw it."""

    peer: object
    """The client's address and source port: one value per connection."""
    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    auth_user: str | None


@dataclass
class RecordingHandler:
    """aiosmtpd handler that records transactions and answers RCPT/DATA as configured."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    """recipient -> reply to give instead of 250."""
    data_reply: str | None = None
    """Reply to every DATA instead of 250."""
    received: list[Received] = field(default_factory=list)
    servers: list[SMTP] = field(default_factory=list)
    """The server side of each connection that carried a message (to drop it from the test)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        login = session.auth_data
        if server not in self.servers:
            self.servers.append(server)
        content = envelope.original_content or b""
        self.received.append(
            Received(
                peer=session.peer,
                mail_from=envelope.mail_from or "",
                mail_options=tuple(envelope.mail_options),
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                tls=server.transport is not None and server.transport.get_extra_info("ssl_object") is not None,
                auth_user=login.login.decode() if isinstance(login, LoginPassword) else None,
            )
        )
        return "250 2.0.0 queued"


class _BoundController(Controller):
    """aiosmtpd Controller on a socket the kernel gave a free port (aiosmtpd itself needs a fixed port)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@dataclass
class AiosmtpdUpstream:
    """An aiosmtpd server in this process (its own thread and loop): see the module docstring for why."""

    host: str
    port: int
    handler: RecordingHandler
    controller: Controller

    async def drop_connections(self) -> None:
        """Close every connection from the server side, as an upstream's idle timeout would.

        Returns once the server has closed them on its own loop: from then on it reads nothing more
        on any of them, so no reply can come, and a client's next use of one finds it dead.
        """

        async def close_all() -> None:
            for server in self.handler.servers:
                if server.transport is not None:
                    server.transport.close()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close_all(), self.controller.loop))

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def connections(self) -> int:
        """How many distinct connections carried the received messages."""
        return len({r.peer for r in self.received})


USERS = {"relay": "s3cret-pass"}


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and USERS.get(auth_data.login.decode()) == auth_data.password.decode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


AiosmtpdUpstreamFactory = Callable[..., AiosmtpdUpstream]


@pytest.fixture
def aiosmtpd_upstream_factory(delivery_tls: TlsFiles) -> Iterator[AiosmtpdUpstreamFactory]:
    """Start aiosmtpd upstreams: tls none|starttls|implicit, optional AUTH (USERS), scripted replies."""
    controllers: list[Controller] = []

    def start(*, tls: str = "none", auth: bool = False, handler: RecordingHandler | None = None) -> AiosmtpdUpstream:
        handler = handler or RecordingHandler()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True, "server_hostname": SERVER_NAME}
        if tls == "starttls":
            kwargs["tls_context"] = delivery_tls.server_context()
            kwargs["require_starttls"] = False
        if auth:
            kwargs["authenticator"] = _authenticator
            kwargs["auth_require_tls"] = tls == "starttls"  # aiosmtpd does not see implicit TLS
        ssl_context = delivery_tls.server_context() if tls == "implicit" else None
        controller = _BoundController(handler, ssl_context=ssl_context, **kwargs)
        controller.start()
        controllers.append(controller)
        return AiosmtpdUpstream(controller.hostname, controller.port, handler, controller)

    yield start
    for controller in controllers:
        controller.stop()


def relay_config(
    routing: dict[str, Any],
    *,
    credentials: dict[str, Credentials] | None = None,
    cas: dict[str, bytes] | None = None,
    nameservers: list[str] | None = None,
) -> RelayConfig:
    """A resolved config from a raw `spec.routing` document (camelCase, as in a manifest)."""
    spec = parse_spec({"routing": routing, "dns": {"nameservers": nameservers or []}})
    return RelayConfig(name="t", namespace="default", spec=spec, credentials=credentials or {}, cas=cas or {})


def deliverer(
    routing: dict[str, Any],
    tmp_path: Path,
    *,
    timeout: float = 5.0,
    pool_size: int = 4,
    metrics: RelayMetrics | None = None,
    dns_lifetime: float | None = None,
    **kwargs: Any,
) -> Deliverer:
    """A Deliverer for a raw `spec.routing` (kwargs: credentials, cas, nameservers), with its own metrics
    unless given some; `dns_lifetime` shortens the resolver's budget for tests of a dead DNS."""
    config = relay_config(routing, **kwargs)
    resolver = make_resolver(config.spec.dns)
    if dns_lifetime is not None:
        resolver.lifetime = dns_lifetime
    return Deliverer(
        config,
        resolver,
        tmp_path,
        hostname="relay.test",
        metrics=RelayMetrics() if metrics is None else metrics,
        pool_size=pool_size,
        timeout=timeout,
    )


def smarthost(port: int, **extra: Any) -> dict[str, Any]:
    """A plain-text smarthost on 127.0.0.1 (`extra`: tls, verifyTLS, credentialsSecret, ...)."""
    return {"host": "127.0.0.1", "port": port, "tls": "none", **extra}


def message(
    mail_from: str, *rcpts: str, smtputf8: bool = False, body_8bit: bool = False, queue_id: str = "Q1"
) -> StoredMessage:
    envelope = RelayEnvelope(
        mail_from=mail_from, rcpt_tos=rcpts, smtputf8=smtputf8, body_8bit=body_8bit, received_at=time.time()
    )
    return StoredMessage(id=queue_id, envelope=envelope, size=0, pending=set(rcpts))


def body(subject: str = "hello", extra_headers: str = "") -> bytes:
    return (
        f"From: a@sender.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n{extra_headers}\r\n"
        "Just a test.\r\n.leading dot line\r\n"
    ).encode()
