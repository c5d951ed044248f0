"""Opening one upstream SMTP session: TCP to an address from our resolver, TLS as asked, EHLO, AUTH.

aiosmtplib sets the session up and stays in charge of closing it; once it is set up, its replies
belong to the pipelining `ReplyReader`. Smarthosts (pooled) and MX hosts (one session per domain)
both connect through here. Any failure to get a usable session is `HostFailed` with a temporary
outcome: a misconfigured or unreachable upstream must defer mail, never bounce it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from smtp_relay.config.resolved import Credentials
from smtp_relay.delivery.pipelining import ConnectionBroken, ReplyReader
from smtp_relay.model.envelope import Outcome

QUIT_TIMEOUT = 2.0
"""Seconds to wait for QUIT's reply: the session is over either way."""


class HostFailed(Exception):
    """This host could not take the transaction at all: try the next one."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def client_tls_context(verify: bool, ca_pem: bytes | None) -> ssl.SSLContext:
    """Verification with the given CA only (caSecret), the system CAs, or none at all."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_pem is not None:
        return ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    return ssl.create_default_context()


class _SocketFreeingSMTP(aiosmtplib.SMTP):
    """aiosmtplib.SMTP whose close() frees the socket at once, over TLS too.

    aiosmtplib closes the TLS transport, which only starts the TLS shutdown (send close_notify, wait for
    the server's) and forgets it: the TCP transport underneath stays open until the server answers, or
    ssl_shutdown_timeout (30 s) later, and if the loop stops first the socket is never closed at all.
    Every close, ours and aiosmtplib's own (lost connection, timeout, failed connect), comes through
    here, so aborting the transport after closing it means no path leaves a socket behind. An SMTP
    client has no use for the TLS goodbye: a session is over at QUIT's reply or on a failure.
    """

    def close(self) -> None:
        transport = self.transport
        super().close()
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()  # closes the TCP transport under a TLS one too; a no-op once it is closed


@dataclass
class Connection:
    """A set-up upstream session: aiosmtplib owns the socket (close), the reader its replies."""

    smtp: aiosmtplib.SMTP
    reader: ReplyReader
    remote: str
    last_used: float = field(default_factory=time.monotonic)
    transactions: int = 0
    """Transactions this session carried (for maxMessagesPerConnection)."""

    @property
    def pipelining(self) -> bool:
        return self.smtp.supports_extension("pipelining")

    async def command(self, line: bytes, timeout: float) -> bool:  # noqa: ASYNC109
        """Send a command outside a transaction (RSET, QUIT): True on a positive reply."""
        try:
            return (await self.reader.command(line, timeout)).positive
        except ConnectionBroken:
            return False

    async def probe(self) -> bool:
        """RSET on a connection idle for a while: True when it is still usable."""
        return await self.command(b"RSET\r\n", self.smtp.timeout or 30.0)

    async def reset(self) -> None:
        """RSET after a refused transaction so the connection can be reused; a failure just closes it."""
        if not await self.probe():
            self.smtp.close()

    async def quit(self) -> None:
        """End the session politely (QUIT), then free the socket whatever the server said."""
        if self.smtp.is_connected:
            await self.command(b"QUIT\r\n", QUIT_TIMEOUT)
        self.smtp.close()


async def connect(
    name: str,
    addresses: list[str],
    port: int,
    *,
    tls: str,
    context: ssl.SSLContext | None,
    local_hostname: str,
    timeout: float,  # noqa: ASYNC109 (aiosmtplib's per-command budget, not a deadline for this call)
    credentials: Credentials | None = None,
    opportunistic: bool = False,
) -> Connection:
    """Connect to the first reachable address, do TLS as asked, EHLO and AUTH; HostFailed if none works.

    The socket is connected here (to an address from our resolver) and handed to aiosmtplib with the
    configured name, so certificate checks and SNI use the name, not the address.
    """
    failure = Outcome.temporary(0, f"{name}: no address", f"{name}:{port}")
    # opportunistic STARTTLS falls back to plain text when the handshake fails (as Postfix does)
    modes: list[bool | None] = [None, False] if opportunistic else [tls == "starttls"]
    for address in addresses:
        remote = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        for start_tls in modes:
            try:
                return await _session(
                    name,
                    address,
                    port,
                    remote,
                    tls=tls,
                    start_tls=start_tls,
                    context=context,
                    credentials=credentials,
                    local_hostname=local_hostname,
                    timeout=timeout,
                )
            except HostFailed as exc:
                failure = exc.outcome
                if not (start_tls is None and _caused_by_tls(exc)):
                    break
    raise HostFailed(failure)


async def _session(
    name: str,
    address: str,
    port: int,
    remote: str,
    *,
    tls: str,
    start_tls: bool | None,
    context: ssl.SSLContext | None,
    credentials: Credentials | None,
    local_hostname: str,
    timeout: float,  # noqa: ASYNC109
) -> Connection:
    """One connection attempt to one address: TCP, greeting, TLS, EHLO, AUTH."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
        smtp = _SocketFreeingSMTP(
            hostname=name,
            sock=sock,
            use_tls=tls == "implicit",
            start_tls=start_tls,
            tls_context=context,
            local_hostname=local_hostname,
            timeout=timeout,
        )
    except (OSError, TimeoutError) as exc:
        sock.close()
        reason = str(exc) or type(exc).__name__
        raise HostFailed(Outcome.temporary(0, f"4.4.1 connect to {remote} failed: {reason}", remote)) from None
    except BaseException:  # cancelled while connecting: the socket is still ours to close
        sock.close()
        raise
    try:
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:
            await _greet(smtp)
        if credentials is not None:
            await smtp.login(credentials.username, credentials.password)
        reader = ReplyReader.take_over(smtp.transport)  # from here on, replies are ours (pipelining)
    except aiosmtplib.SMTPResponseException as exc:
        failure = Outcome.temporary(exc.code, f"{remote}: {exc.message}", remote)
        cause: BaseException = exc
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError, ConnectionBroken) as exc:
        failure = Outcome.temporary(0, f"{remote}: {type(exc).__name__}: {exc}", remote)
        cause = exc
    except BaseException:
        smtp.close()
        raise
    else:
        return Connection(smtp, reader, remote)
    # No sock.close() here: the socket belongs to the transport now (asyncio closes it with the
    # transport, even after a failed handshake); closing it early would free the fd under it.
    smtp.close()
    raise HostFailed(failure) from cause


def _caused_by_tls(exc: BaseException) -> bool:
    """True when a TLS handshake error is anywhere in the chain (aiosmtplib wraps some of them)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _greet(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, falling back to HELO for servers without ESMTP."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError:
        await smtp.helo()
