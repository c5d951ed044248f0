"""Delivery of spooled messages: smarthosts (pooled, failover), direct MX, or a capture Maildir.

The result is one `Outcome` per recipient, taken from the remote server's own replies, so the
scheduler can bounce exactly the refused recipients and retry exactly the deferred ones. Connection
trouble is always temporary: a misconfigured or unreachable upstream must defer mail, never bounce it.

Smarthost connections are pooled and kept open between messages (a TLS handshake and AUTH per message
would cost more than the message). All host names are resolved through the relay's own resolver, so
`spec.dns` is honoured and the TLS name stays the configured host name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import dns.asyncresolver

from smtp_relay.config.resolved import Credentials, RelayConfig
from smtp_relay.config.spec import CaptureSpec, Destination, MxSpec, Smarthost
from smtp_relay.delivery.capture import write_capture
from smtp_relay.delivery.pipelining import ConnectionBroken, ReplyReader, UnsafeAddress, path_command, transact
from smtp_relay.delivery.resolver import DnsError, NullMxError, PermanentDnsError, lookup_mx, resolve_host
from smtp_relay.delivery.router import group_by_route, route_label
from smtp_relay.model.envelope import Envelope, Outcome, OutcomeKind, StoredMessage, domain_of
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger(__name__)

PROBE_IDLE = 2.0
"""A pooled connection idle longer than this is probed with RSET before reuse (servers drop idle ones)."""
MAX_IDLE = 60.0
"""A pooled connection idle longer than this is closed instead of reused."""


class _HostFailed(Exception):
    """This host could not take the transaction at all: try the next one."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class _StaleConnection(Exception):
    """The connection died before MAIL FROM was answered (a pooled connection the server had closed):
    the server took nothing it confirmed, so the transaction is tried once more on a new connection."""


def _reply_outcome(code: int, message: str, remote: str) -> Outcome:
    """5xx is permanent; 4xx and anything odd (no code, a 2xx where a 354 was due) are temporary."""
    if 500 <= code < 600:
        return Outcome.permanent(code, message, remote)
    return Outcome.temporary(code, message, remote)


def _fingerprint(*parts: bytes | str | None) -> str:
    """A digest standing for secret settings in pool keys: compares like them, reveals nothing."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\x00" if part is None else (part.encode() if isinstance(part, str) else part))
        digest.update(b"\x01")
    return digest.hexdigest()


@dataclass(frozen=True)
class _HostKey:
    """Everything a pooled connection depends on: a change in any of it means a new pool."""

    host: str
    port: int
    tls: str
    verify_tls: bool
    secrets: str
    """Fingerprint of the CA bundle and the credentials."""


def _tls_context(verify: bool, ca_pem: bytes | None) -> ssl.SSLContext:
    """Verification with the given CA only (caSecret), the system CAs, or none at all."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_pem is not None:
        return ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    return ssl.create_default_context()


class _SMTP(aiosmtplib.SMTP):
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
class _Connection:
    """A set-up upstream session: aiosmtplib owns the socket (close), the reader its replies."""

    smtp: aiosmtplib.SMTP
    reader: ReplyReader
    remote: str
    last_used: float = field(default_factory=time.monotonic)

    @property
    def pipelining(self) -> bool:
        return self.smtp.supports_extension("pipelining")

    async def command(self, line: bytes, timeout: float) -> bool:  # noqa: ASYNC109
        """Send a command outside a transaction (RSET, QUIT): True on a positive reply."""
        try:
            return (await self.reader.command(line, timeout)).positive
        except ConnectionBroken:
            return False


class _Pool:
    """Kept-open connections to one smarthost; the semaphore caps how many exist at once."""

    def __init__(self, key: _HostKey, context: ssl.SSLContext | None, credentials: Credentials | None, size: int):
        self.key = key
        self.context = context
        self.credentials = credentials
        self.slots = asyncio.Semaphore(size)
        self.idle: list[_Connection] = []
        self.retired = False

    def take_idle(self) -> _Connection | None:
        """The most recently used live connection (LIFO keeps few connections warm); drops dead ones."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.smtp.is_connected and now - conn.last_used < MAX_IDLE:
                return conn
            conn.smtp.close()
        return None

    def release(self, conn: _Connection) -> None:
        if conn.smtp.is_connected and not self.retired:
            conn.last_used = time.monotonic()
            self.idle.append(conn)
        else:
            conn.smtp.close()

    async def retire(self) -> None:
        """Stop handing out connections; close idle ones politely (busy ones close on release)."""
        self.retired = True
        idle, self.idle = self.idle, []
        await asyncio.gather(*(_quit(conn) for conn in idle))


async def _quit(conn: _Connection) -> None:
    if conn.smtp.is_connected:
        await conn.command(b"QUIT\r\n", 2.0)
    conn.smtp.close()


class Deliverer:
    """Delivers messages along `spec.routing` and reports one outcome per recipient."""

    def __init__(
        self,
        config: RelayConfig,
        resolver: dns.asyncresolver.Resolver,
        spool_root: Path,
        *,
        hostname: str,
        metrics: RelayMetrics | None = None,
        pool_size: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._resolver = resolver
        self._spool_root = spool_root
        self._hostname = hostname
        self._metrics = metrics
        self._pool_size = pool_size
        self._timeout = timeout
        self._pools: dict[_HostKey, _Pool] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._mx_context: ssl.SSLContext | None = None

    # -- public API ---------------------------------------------------------------------------------

    async def deliver(self, message: StoredMessage, data: bytes, recipients: list[str]) -> dict[str, Outcome]:
        """Deliver `data` to `recipients`, one transaction per destination, destinations in parallel."""
        envelope = message.envelope
        groups = group_by_route(self._config.spec.routing, envelope.mail_from, recipients)
        if len(groups) == 1:  # the common case: no task per destination
            results = [await self._deliver_group(groups[0][0], envelope, data, groups[0][1])]
        else:
            results = await asyncio.gather(
                *(self._deliver_group(destination, envelope, data, members) for destination, members in groups)
            )
        outcomes: dict[str, Outcome] = {}
        for (destination, _), result in zip(groups, results, strict=True):
            outcomes.update(result)
            delivered = sum(1 for o in result.values() if o.kind is OutcomeKind.DELIVERED)
            if self._metrics is not None and delivered:
                self._metrics.delivered.labels(route=route_label(destination)).inc(delivered)
        for recipient, outcome in outcomes.items():
            if outcome.kind is not OutcomeKind.DELIVERED:
                log.info(
                    "%s to=<%s> %s %s %s: %s",
                    message.id,
                    recipient,
                    outcome.kind.value,
                    outcome.remote or "-",
                    outcome.code,
                    outcome.message,
                )
        return outcomes

    def update(self, config: RelayConfig) -> None:
        """Take a reloaded config; pools whose host, TLS, CA or credentials changed are retired."""
        self._config = config
        wanted = {self._key(host) for host in self._all_smarthosts()}
        for key in [k for k in self._pools if k not in wanted]:
            pool = self._pools.pop(key)
            self._retire(pool)

    async def close(self) -> None:
        """Close every pooled connection (QUIT); connections in use close when their transaction ends."""
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.retire() for pool in pools))
        await asyncio.gather(*self._retiring)
        await asyncio.sleep(0)  # let the transports just closed release their sockets (one loop pass)

    # -- routing ------------------------------------------------------------------------------------

    async def _deliver_group(
        self, destination: Destination, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        if destination.smarthosts is not None:
            return await self._via_smarthosts(destination.smarthosts, envelope, data, recipients)
        if destination.mx is not None:
            return await self._via_mx(destination.mx, envelope, data, recipients)
        return await self._via_capture(destination.capture or CaptureSpec(), envelope, data, recipients)

    async def _via_capture(
        self, capture: CaptureSpec, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        only_these = dataclasses.replace(envelope, rcpt_tos=tuple(recipients))
        try:
            path = await asyncio.to_thread(write_capture, self._spool_root, capture.folder, data, only_these)
        except OSError as exc:
            outcome = Outcome.temporary(451, f"4.3.0 capture write failed: {exc}", "capture")
            return dict.fromkeys(recipients, outcome)
        return dict.fromkeys(recipients, Outcome.delivered("capture", f"2.0.0 captured as {path.name}"))

    # -- smarthosts ---------------------------------------------------------------------------------

    def _all_smarthosts(self) -> list[Smarthost]:
        routing = self._config.spec.routing
        return [h for d in (routing.default, *routing.routes) for h in (d.smarthosts or [])]

    def _key(self, host: Smarthost) -> _HostKey:
        credentials = self._config.credentials.get(host.credentials_secret or "")
        ca_pem = self._config.cas.get(host.ca_secret or "")
        secrets = _fingerprint(
            ca_pem, credentials.username if credentials else None, credentials.password if credentials else None
        )
        return _HostKey(host.host.lower(), host.port, host.tls, host.verify_tls, secrets)

    def _pool(self, host: Smarthost) -> _Pool:
        key = self._key(host)
        pool = self._pools.get(key)
        if pool is None:
            context = None
            if host.tls != "none":
                context = _tls_context(host.verify_tls, self._config.cas.get(host.ca_secret or ""))
            credentials = self._config.credentials.get(host.credentials_secret or "")
            pool = self._pools[key] = _Pool(key, context, credentials, self._pool_size)
        return pool

    def _retire(self, pool: _Pool) -> None:
        """Retire a pool whose settings changed; its idle connections are closed in the background."""
        pool.retired = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # update() outside the loop: nothing can be awaited, just drop the sockets
            for conn in pool.idle:
                conn.smtp.close()
            pool.idle.clear()
            return
        task = loop.create_task(pool.retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _via_smarthosts(
        self, hosts: Sequence[Smarthost], envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        """Try each smarthost in order until one runs the transaction (failover on host-level failure)."""
        failures: list[Outcome] = []
        for host in hosts:
            try:
                return await self._smarthost_transaction(self._pool(host), envelope, data, recipients)
            except _HostFailed as exc:
                log.warning("smarthost %s:%s failed: %s", host.host, host.port, exc.outcome.message)
                failures.append(exc.outcome)
        return dict.fromkeys(recipients, _combined_failure(failures))

    async def _smarthost_transaction(
        self, pool: _Pool, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        async with pool.slots:
            conn = pool.take_idle()
            if conn is not None and time.monotonic() - conn.last_used > PROBE_IDLE and not await _probe(conn):
                conn.smtp.close()
                conn = None
            reused = conn is not None
            if conn is None:
                conn = await self._open_smarthost(pool)
            try:
                try:
                    return await self._transact(conn, envelope, data, recipients)
                except BaseException as exc:
                    if not isinstance(exc, _StaleConnection):
                        conn.smtp.close()  # cancelled or failed mid-dialogue: never pool a desynced session
                        raise
                    if not reused:
                        raise _HostFailed(Outcome.temporary(0, f"connection lost: {exc}", conn.remote)) from None
                    conn = await self._open_smarthost(pool)
                    try:
                        return await self._transact(conn, envelope, data, recipients)
                    except _StaleConnection as again:
                        raise _HostFailed(Outcome.temporary(0, f"connection lost: {again}", conn.remote)) from None
                    except BaseException:
                        conn.smtp.close()
                        raise
            finally:
                pool.release(conn)

    async def _open_smarthost(self, pool: _Pool) -> _Connection:
        key = pool.key
        try:
            addresses = await resolve_host(self._resolver, key.host, search=True)
        except DnsError as exc:
            raise _HostFailed(Outcome.temporary(0, f"4.4.3 {exc}", f"{key.host}:{key.port}")) from None
        return await self._connect(
            key.host, addresses, key.port, tls=key.tls, context=pool.context, credentials=pool.credentials
        )

    # -- connections and the transaction ------------------------------------------------------------

    async def _connect(
        self,
        name: str,
        addresses: list[str],
        port: int,
        *,
        tls: str,
        context: ssl.SSLContext | None,
        credentials: Credentials | None = None,
        opportunistic: bool = False,
    ) -> _Connection:
        """Connect to the first reachable address, do TLS as asked, EHLO and AUTH; _HostFailed if none works.

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
                    return await self._session(name, address, port, remote, tls, start_tls, context, credentials)
                except _HostFailed as exc:
                    failure = exc.outcome
                    if not (start_tls is None and _caused_by_tls(exc)):
                        break
        raise _HostFailed(failure)

    async def _session(
        self,
        name: str,
        address: str,
        port: int,
        remote: str,
        tls: str,
        start_tls: bool | None,
        context: ssl.SSLContext | None,
        credentials: Credentials | None,
    ) -> _Connection:
        """One connection attempt to one address: TCP, greeting, TLS, EHLO, AUTH."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), self._timeout)
            smtp = _SMTP(
                hostname=name,
                sock=sock,
                use_tls=tls == "implicit",
                start_tls=start_tls,
                tls_context=context,
                local_hostname=self._hostname,
                timeout=self._timeout,
            )
        except (OSError, TimeoutError) as exc:
            sock.close()
            reason = str(exc) or type(exc).__name__
            raise _HostFailed(Outcome.temporary(0, f"4.4.1 connect to {remote} failed: {reason}", remote)) from None
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
            return _Connection(smtp, reader, remote)
        # No sock.close() here: the socket belongs to the transport now (asyncio closes it with the
        # transport, even after a failed handshake); closing it early would free the fd under it.
        smtp.close()
        raise _HostFailed(failure) from cause

    async def _transact(
        self, conn: _Connection, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        """MAIL, RCPT each, DATA (pipelined where offered): outcomes from the server's own replies.

        Raises _StaleConnection if the connection is gone before MAIL is answered (nothing was
        confirmed), _HostFailed when the host cannot take this message at all (no SMTPUTF8).
        """
        smtp, remote = conn.smtp, conn.remote
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if envelope.body_8bit and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if envelope.smtputf8:
            if not smtp.supports_extension("smtputf8"):
                raise _HostFailed(Outcome.permanent(553, "5.6.7 the server does not support SMTPUTF8", remote))
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            mail = path_command(b"MAIL FROM", envelope.mail_from, options, encoding)
        except UnsafeAddress as exc:
            return dict.fromkeys(recipients, Outcome.permanent(553, f"5.1.7 bad sender address: {exc}", remote))
        outcomes: dict[str, Outcome] = {}
        sent: list[str] = []
        commands: list[bytes] = []
        for recipient in recipients:
            try:
                commands.append(path_command(b"RCPT TO", recipient, (), encoding))
            except UnsafeAddress as exc:
                outcomes[recipient] = Outcome.permanent(553, f"5.1.3 bad recipient address: {exc}", remote)
            else:
                sent.append(recipient)
        if not sent:
            return outcomes
        try:
            result = await transact(
                conn.reader,
                mail,
                commands,
                data,
                pipelining=conn.pipelining,
                chunking=smtp.supports_extension("chunking"),
                timeout=self._timeout,
            )
        except ConnectionBroken as exc:
            smtp.close()
            if not exc.replies:
                raise _StaleConnection(exc.reason) from None
            lost = Outcome.temporary(0, f"4.4.2 {exc.reason}", remote)
            for recipient, reply in zip(sent, exc.replies[1:], strict=False):
                if not reply.positive:
                    outcomes[recipient] = _reply_outcome(reply.code, reply.text, remote)
            for recipient in recipients:
                outcomes.setdefault(recipient, lost)
            return outcomes
        if not result.mail.positive:
            await _reset(conn)
            outcomes.update(dict.fromkeys(sent, _reply_outcome(result.mail.code, result.mail.text, remote)))
            return outcomes
        accepted: list[str] = []
        for recipient, reply in zip(sent, result.rcpts, strict=True):
            if reply.positive:
                accepted.append(recipient)
            else:
                outcomes[recipient] = _reply_outcome(reply.code, reply.text, remote)
        if result.delivered:
            assert result.done is not None
            outcomes.update(dict.fromkeys(accepted, Outcome.delivered(remote, result.done.text)))
            return outcomes
        await _reset(conn)
        refusal = result.done or result.data
        if accepted and refusal is not None:
            outcomes.update(dict.fromkeys(accepted, _reply_outcome(refusal.code, refusal.text, remote)))
        return outcomes

    # -- direct MX delivery -------------------------------------------------------------------------

    async def _via_mx(self, mx: MxSpec, envelope: Envelope, data: bytes, recipients: list[str]) -> dict[str, Outcome]:
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(domain_of(recipient), []).append(recipient)
        results = await asyncio.gather(
            *(self._mx_domain(mx, domain, envelope, data, members) for domain, members in by_domain.items())
        )
        return {recipient: outcome for result in results for recipient, outcome in result.items()}

    async def _mx_domain(
        self, mx: MxSpec, domain: str, envelope: Envelope, data: bytes, recipients: list[str]
    ) -> dict[str, Outcome]:
        """Try the domain's MX hosts in preference order; opportunistic STARTTLS unless requireTLS."""
        try:
            hosts = await lookup_mx(self._resolver, domain)
        except NullMxError as exc:
            return dict.fromkeys(recipients, Outcome.permanent(556, f"5.1.10 {exc}"))
        except PermanentDnsError as exc:
            return dict.fromkeys(recipients, Outcome.permanent(550, f"5.1.2 {exc}"))
        except DnsError as exc:
            return dict.fromkeys(recipients, Outcome.temporary(451, f"4.4.3 {exc}"))
        if self._mx_context is None:
            self._mx_context = _tls_context(verify=False, ca_pem=None)  # RFC 7435: opportunistic, unauthenticated
        failures: list[Outcome] = []
        for host in hosts:
            try:
                addresses = await resolve_host(self._resolver, host, search=False)
            except DnsError as exc:
                failures.append(Outcome.temporary(0, f"4.4.3 MX {exc}", f"{host}:{mx.port}"))
                continue
            try:
                conn = await self._connect(
                    host, addresses, mx.port, tls="starttls", context=self._mx_context, opportunistic=not mx.require_tls
                )
            except _HostFailed as exc:
                failures.append(exc.outcome)
                continue
            try:
                result = await self._transact(conn, envelope, data, recipients)
            except _HostFailed as exc:
                failures.append(exc.outcome)
            except _StaleConnection as exc:
                failures.append(Outcome.temporary(0, f"4.4.2 connection lost: {exc}", conn.remote))
            except BaseException:
                conn.smtp.close()
                raise
            else:
                await _quit(conn)
                return result
            await _quit(conn)
        return dict.fromkeys(recipients, _combined_failure(failures))


def _combined_failure(failures: list[Outcome]) -> Outcome:
    """Permanent only when every host said so for good; any temporary trouble keeps the mail queued."""
    if not failures:
        return Outcome.temporary(0, "4.4.0 no host to deliver to")
    if all(f.kind is OutcomeKind.PERMANENT for f in failures):
        return failures[-1]
    return [f for f in failures if f.kind is not OutcomeKind.PERMANENT][-1]


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


async def _probe(conn: _Connection) -> bool:
    """RSET on a connection idle for a while: True when it is still usable."""
    return await conn.command(b"RSET\r\n", conn.smtp.timeout or 30.0)


async def _reset(conn: _Connection) -> None:
    """RSET after a refused transaction so the connection can be reused; a failure just closes it."""
    if not await _probe(conn):
        conn.smtp.close()
