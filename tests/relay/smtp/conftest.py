"""Fixtures for the listener tests: a relay on 127.0.0.1 with an in-memory sink, and a raw client."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from bench.peers.ports import free_port

from smtp_relay.config.domains import SendingDomains
from smtp_relay.config.manifest import parse_spec
from smtp_relay.config.resolved import RelayConfig, TlsMaterial
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.smtp.server import RelayServer
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.harness.metrics import sample as registry_sample
from tests.peers.tls import IssuedCert


@dataclass
class MemorySink:
    """The seam the spool fills in production: records what it is given and hands out queue ids."""

    messages: list[tuple[Envelope, bytes]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    fail: bool = False
    gate: asyncio.Event | None = None
    """When given, each commit waits for it to be set: a slow disk the test controls."""
    committing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set as a commit begins (before the gate)."""
    stored: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a message is stored."""

    async def __call__(self, envelope: Envelope, data: bytes) -> str:
        self.committing.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("spool unavailable")
        self.messages.append((envelope, data))
        self.ids.append(uuid.uuid4().hex[:12].upper())
        self.stored.set()
        return self.ids[-1]


def make_config(
    spec: dict[str, Any],
    *,
    cert: IssuedCert | None = None,
    users: dict[str, str] | None = None,
    sending_domains: SendingDomains | None = None,
) -> RelayConfig:
    """A resolved config as `resolve` makes it, with the Secrets given inline."""
    spec = dict(spec)
    if cert is not None:
        spec.setdefault("tls", {"secretName": "relay-tls"})
    if users is not None:
        spec.setdefault("clients", {}).setdefault("users", {"secretName": "relay-users"})
    tls = TlsMaterial(cert_pem=cert.cert_pem, key_pem=cert.key_pem) if cert is not None else None
    return RelayConfig(
        name="test",
        namespace="default",
        spec=parse_spec(spec),
        tls=tls,
        users=users or {},
        sending_domains=sending_domains,
    )


def listeners(*items: dict[str, Any]) -> list[dict[str, Any]]:
    """Listener dicts with free ports filled in."""
    return [{"port": free_port(), **item} for item in items]


@dataclass
class Relay:
    server: RelayServer
    sink: MemorySink
    metrics: RelayMetrics

    def port(self, name: str = "smtp") -> int:
        return self.server.bound_ports()[name]

    def sample(self, metric: str, **labels: str) -> float:
        return registry_sample(self.metrics.registry, metric, **labels)


StartRelay = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def start_relay() -> AsyncIterator[StartRelay]:
    """`await start_relay(spec_dict, cert=..., users=..., sending_domains=..., policy=...)` starts a relay;
    all are closed at teardown."""
    started: list[RelayServer] = []

    async def _start(
        spec: dict[str, Any],
        *,
        cert: IssuedCert | None = None,
        users: dict[str, str] | None = None,
        sink: MemorySink | None = None,
        sending_domains: SendingDomains | None = None,
        policy: PolicyEngine | None = None,
        metrics: RelayMetrics | None = None,
    ) -> Relay:
        spec = dict(spec)
        spec.setdefault("listeners", listeners({"name": "smtp"}))
        metrics = metrics or RelayMetrics()
        sink = sink or MemorySink()
        config = make_config(spec, cert=cert, users=users, sending_domains=sending_domains)
        server = RelayServer(config, sink, hostname="relay.test", metrics=metrics, policy=policy)
        await server.start()
        started.append(server)
        return Relay(server, sink, metrics)

    yield _start
    for server in started:
        await server.close()


class RawClient:
    """A byte-exact SMTP client: sends what it is told, reads replies as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, preamble: bytes = b"", greet: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if preamble:
            await client.send(preamble)
        if greet:
            code, text = await client.reply()
            assert code == 220, text
        return client

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def reply(self, seconds: float = 5.0) -> tuple[int, str]:
        """One (possibly multi-line) reply; (0, "") when the server closed the connection."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), seconds)
            if not line:
                return 0, "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), "\n".join(lines)

    async def cmd(self, line: bytes | str) -> tuple[int, str]:
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.reply()

    async def closed(self, seconds: float = 5.0) -> bool:
        """True when the server has closed the connection (EOF)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), seconds) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def _connect(port: int, **kwargs: Any) -> RawClient:
        client = await RawClient.connect(port, **kwargs)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()
