"""Kept-open smarthost connections: one pool per host and settings, bounded, newest first.

A TLS handshake and AUTH per message would cost more than the message, so a smarthost session is
kept open between messages. A pool is keyed by everything its connections depend on (host, port, TLS
mode, verification, CA bundle, credentials), so a config reload that changes any of it gets a new
pool and the old one is retired; secrets enter the key only as a digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass

from smtp_relay.config.resolved import Credentials, RelayConfig
from smtp_relay.config.spec import Smarthost
from smtp_relay.delivery.connection import Connection, client_tls_context

PROBE_IDLE = 2.0
"""A pooled connection idle longer than this is probed with RSET before reuse (servers drop idle ones)."""
MAX_IDLE = 60.0
"""A pooled connection idle longer than this is closed instead of reused."""


def _fingerprint(*parts: bytes | str | None) -> str:
    """A digest standing for secret settings in pool keys: compares like them, reveals nothing."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\x00" if part is None else (part.encode() if isinstance(part, str) else part))
        digest.update(b"\x01")
    return digest.hexdigest()


@dataclass(frozen=True)
class HostKey:
    """Everything a pooled connection depends on: a change in any of it means a new pool."""

    host: str
    port: int
    tls: str
    verify_tls: bool
    secrets: str
    """Fingerprint of the CA bundle and the credentials."""


def host_key(config: RelayConfig, host: Smarthost) -> HostKey:
    """The pool key of a smarthost under `config` (its CA and credentials Secrets included)."""
    credentials = config.credentials.get(host.credentials_secret or "")
    ca_pem = config.cas.get(host.ca_secret or "")
    secrets = _fingerprint(
        ca_pem, credentials.username if credentials else None, credentials.password if credentials else None
    )
    return HostKey(host.host.lower(), host.port, host.tls, host.verify_tls, secrets)


class ConnectionPool:
    """Kept-open connections to one smarthost; the semaphore caps how many exist at once."""

    def __init__(self, key: HostKey, context: ssl.SSLContext | None, credentials: Credentials | None, size: int):
        self.key = key
        self.context = context
        self.credentials = credentials
        self.slots = asyncio.Semaphore(size)
        self.idle: list[Connection] = []
        self.retired = False

    @classmethod
    def for_host(cls, key: HostKey, host: Smarthost, config: RelayConfig, size: int) -> ConnectionPool:
        """A pool with the TLS context and credentials `host` asks for under `config`."""
        context = None
        if host.tls != "none":
            context = client_tls_context(host.verify_tls, config.cas.get(host.ca_secret or ""))
        return cls(key, context, config.credentials.get(host.credentials_secret or ""), size)

    def take_idle(self) -> Connection | None:
        """The most recently used live connection (LIFO keeps few connections warm); drops dead ones."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.smtp.is_connected and now - conn.last_used < MAX_IDLE:
                return conn
            conn.smtp.close()
        return None

    def release(self, conn: Connection) -> None:
        if conn.smtp.is_connected and not self.retired:
            conn.last_used = time.monotonic()
            self.idle.append(conn)
        else:
            conn.smtp.close()

    async def retire(self) -> None:
        """Stop handing out connections; close idle ones politely (busy ones close on release)."""
        self.retired = True
        idle, self.idle = self.idle, []
        await asyncio.gather(*(conn.quit() for conn in idle))

    def retire_without_quit(self) -> None:
        """Retire with no event loop to await QUIT on (a reload outside the loop): just drop the sockets."""
        self.retired = True
        for conn in self.idle:
            conn.smtp.close()
        self.idle.clear()
