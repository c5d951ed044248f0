"""One SMTP session: aiosmtpd's protocol, hardened for a relay that must never be open.

aiosmtpd is kept for what it does well (the STARTTLS transport swap, AUTH challenges, PROXY protocol
parsing, idle timeouts) and its command loop and transaction commands are replaced, because a relay
needs what the stock loop does not give: refusal of bare CR/LF in commands (smuggling), enhanced
status codes on every reply, a chunked DATA reader (see data_reader), admission decisions from a
pure check chain (see admission), drain, and a config snapshot per session so reloads never disturb
a session in flight.

This module holds the connection's life (PROXY header, implicit TLS, greeting, command loop, the
checks every command line passes) and the simple verbs; MAIL/RCPT/DATA, AUTH and STARTTLS are mixed
in from transaction, auth and tls.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import TLSSetupException

from smtp_relay.policy.verdict import Verdict
from smtp_relay.smtp.auth import AuthCommand
from smtp_relay.smtp.data_reader import take_buffered
from smtp_relay.smtp.proxy import read_proxy_header
from smtp_relay.smtp.state import COMMAND_LIMIT, COMMAND_LIMITS
from smtp_relay.smtp.tls import TlsCommands
from smtp_relay.smtp.transaction import MailTransactionCommands

log = logging.getLogger("smtp_relay.smtp")


class RelaySession(MailTransactionCommands, AuthCommand, TlsCommands):
    """One SMTP connection. Reads its listener and config once, at connect."""

    # --- the connection --------------------------------------------------------------------
    # Every accepted socket is counted (gauge, drain, per-client limit) in connection_made and closed
    # and uncounted exactly once in _finish, whatever stage it reached: aiosmtpd cancels the command
    # loop on EOF, before it has even started when a client connects and closes at once, so the
    # loop's own `finally` cannot be the only place a socket is closed.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        accepted = self.transport is None  # aiosmtpd calls this again with the TLS transport after STARTTLS
        super().connection_made(transport)
        if not accepted:
            return
        peer = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        self._relay.session_started(self)
        if not self._setup.config.spec.clients.proxy_protocol:  # else the PROXY header names the client
            self._count_client()

    def _count_client(self) -> None:
        policy = self._relay.policy
        if policy is not None and self._client_ip and self._counted is None:
            policy.connection_opened(self._client_ip)
            self._counted = (policy, self._client_ip)

    def eof_received(self) -> bool | None:
        super().eof_received()  # cancels the command loop
        return False  # so the transport closes itself (aiosmtpd would keep the half-closed socket open)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._finish()

    def _finish(self) -> None:
        """Close the socket and uncount the connection; idempotent (called on close, EOF and loop end)."""
        if self._finished:
            return
        self._finished = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        for transport in (self.transport, self._original_transport):
            if transport is not None:
                transport.close()
        if self._counted is not None:
            policy, client_ip = self._counted
            self._counted = None
            policy.connection_closed(client_ip)
        self._relay.session_ended(self)

    async def _handle_client(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("client=%s connection lost", self._client_ip)
        except TLSSetupException:
            log.info("client=%s TLS handshake failed", self._client_ip)
        finally:
            self._finish()  # also on cancellation: a failed TLS handshake never reaches connection_lost

    async def _serve(self) -> None:
        if self._setup.config.spec.clients.proxy_protocol:
            if not await read_proxy_header(self):
                return
            self._count_client()
        policy = self._relay.policy
        if policy is not None:
            limited = policy.on_accept(self._facts())
            if limited.refuses:
                await self._refuse_before_greeting(limited)
                return
        if self._listener.tls == "implicit":
            await self._start_tls(take_buffered(self._reader))
        if self._relay.draining:
            self._relay.metrics.rejected.labels(reason="draining").inc()
            await self._hang_up("421 4.3.2 Service shutting down")
            return
        decision = self._setup.admission.on_connect(self._facts())
        verdict = decision.verdict
        if not verdict.refuses and policy is not None:
            verdict = await policy.on_connect(self._facts())
        if verdict.refuses:
            await self._refuse(verdict, "connect")
            await self._hang_up(f"421 4.7.0 {self.hostname} closing connection")
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        while self.transport is not None and not self._closing:
            await self._one_command()

    async def _refuse_before_greeting(self, verdict: Verdict) -> None:
        """A connection over its client's limit: 421 and close, before any TLS handshake is paid for.

        An implicit-TLS client cannot read a reply before its handshake, so it is only closed.
        """
        if self._listener.tls == "implicit":
            self._relay.metrics.rejected.labels(reason=verdict.reason).inc()
            log.info(
                "refused client=%s listener=%s connect reason=%s (closed before TLS)",
                self._client_ip,
                self._listener.name,
                verdict.reason,
            )
        else:
            await self._refuse(verdict, "connect")
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # --- command lines ---------------------------------------------------------------------

    async def _one_command(self) -> None:
        line = await self._read_command()
        if line is None:
            return
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            await self._error("500 5.5.2 Bare CR or LF not allowed, use CRLF", "bare_cr_lf")
            return
        if b"\x00" in line:
            await self._error("500 5.5.2 NUL not allowed in commands", "nul_byte")
            return
        text = line[:-2]
        verb_bytes, _, arg_bytes = text.partition(b" ")
        try:
            verb = verb_bytes.decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        if not verb.isalpha():
            await self._error("500 5.5.2 Syntax error", "bad_command")
            return
        if len(line) > COMMAND_LIMITS.get(verb, COMMAND_LIMIT):
            await self._error("500 5.5.6 Line too long", "line_too_long")
            return
        method = self._smtp_methods.get(verb)
        if method is None:
            await self._error("500 5.5.1 Command not recognized", "unknown_command")
            return
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape") or None
        self._reset_timeout()
        try:
            await method(arg)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, TLSSetupException):
            raise
        except Exception:
            log.exception("client=%s internal error in %s", self._client_ip, verb)
            self._relay.metrics.rejected.labels(reason="internal_error").inc()
            self._reset_transaction()
            await self.push("451 4.3.0 Internal error, try again later")

    # --- the simple verbs ------------------------------------------------------------------

    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self._error("501 5.5.4 Syntax: HELO hostname", "syntax")
            return
        assert self.session is not None
        self._reset_transaction()
        self.session.host_name = arg
        self.session.extended_smtp = False
        await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self._error("501 5.5.4 Syntax: EHLO hostname", "syntax")
            return
        assert self.session is not None
        self._reset_transaction()
        self.session.host_name = arg
        self.session.extended_smtp = True
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self._setup.max_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if self._listener.tls == "starttls" and self.tls_context is not None and not self.is_secure():
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        await self.push("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push("250 2.0.0 Ok")

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self._error("501 5.5.4 Syntax: RSET", "syntax")
            return
        self._reset_transaction()
        await self.push("250 2.0.0 Ok")

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self._hang_up("221 2.0.0 Bye")

    async def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            await self._error("501 5.5.4 Syntax: VRFY address", "syntax")
            return
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self._error("502 5.5.1 EXPN not available", "unknown_command")

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.push("214 2.0.0 Commands: HELO EHLO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")
