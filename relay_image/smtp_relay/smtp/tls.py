"""TLS on the listener: the STARTTLS and implicit-TLS transport swap, and server contexts from the config's PEM.

The swap is aiosmtpd's STARTTLS swap, callable on its own so an implicit-TLS listener can feed it
the bytes the stream already buffered (a ClientHello that came in the same read as the PROXY header).

`ssl.SSLContext.load_cert_chain` only reads files, so the PEM goes to a private temporary file that
lives only for the call. Contexts are cached by content: a config reload that keeps the same
certificate keeps the same context, and a renewed certificate gives new sessions a new one.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import hashlib
import os
import ssl
import tempfile

from aiosmtpd.smtp import TLSSetupException

from smtp_relay.config.resolved import TlsMaterial
from smtp_relay.smtp.state import SessionState

_cache: dict[bytes, ssl.SSLContext] = {}


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the certificate chain and key (cached by content)."""
    digest = hashlib.sha256(material.cert_pem + b"\0" + material.key_pem).digest()
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # SMTP clients rarely present certificates; asking would only break opportunistic TLS.
    context.verify_mode = ssl.CERT_NONE
    with tempfile.TemporaryDirectory(prefix="relay-tls-") as folder:
        os.chmod(folder, 0o700)
        cert_path = os.path.join(folder, "tls.crt")
        key_path = os.path.join(folder, "tls.key")
        for path, data in ((cert_path, material.cert_pem), (key_path, material.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)
    if len(_cache) > 8:
        _cache.clear()
    _cache[digest] = context
    return context


class TlsCommands(SessionState):
    """The STARTTLS verb (RFC 3207) and the transport swap it shares with implicit-TLS listeners."""

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self._error("501 5.5.4 Syntax: STARTTLS", "syntax")
            return
        if self._listener.tls != "starttls" or self.tls_context is None:
            await self._error("502 5.5.1 STARTTLS not available", "unknown_command")
            return
        if self.is_secure():
            await self._error("503 5.5.1 TLS already active", "sequence")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        await self._start_tls()

    async def _start_tls(self, initial: bytes = b"") -> None:
        """Wrap the connection in TLS (as aiosmtpd's STARTTLS does), feeding bytes already read."""
        assert self.tls_context is not None and self.transport is not None
        waiter = self.loop.create_future()
        protocol = sslproto.SSLProtocol(self.loop, self, self.tls_context, waiter, server_side=True)
        self._tls_protocol = protocol
        self._original_transport = self.transport
        self._original_transport.set_protocol(protocol)
        self.transport = protocol._app_transport
        protocol.connection_made(self._original_transport)
        if initial:
            buffer = protocol.get_buffer(len(initial))
            buffer[: len(initial)] = initial
            protocol.buffer_updated(len(initial))
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise TLSSetupException() from exc
