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

from smtp_relay.smtp.auth import AuthCommand
from smtp_relay.smtp.data_reader import take_buffered
from smtp_relay.smtp.proxy import read_proxy_header
from smtp_relay.smtp.tls import TlsCommands
from smtp_relay.smtp.transaction import MailTransactionCommands

log = logging.getLogger("smtp_relay.smtp")

COMMAND_LIMIT = 512
"""RFC 5321 4.5.3.1.4, CRLF included."""
COMMAND_LIMITS = {"MAIL": COMMAND_LIMIT + 26 + 10 + 14 + 64, "RCPT": COMMAND_LIMIT + 64, "AUTH": 12288}
"""Extensions lengthen some commands: SIZE, SMTPUTF8, BODY, AUTH= on MAIL; RFC 4954 4 for AUTH."""


class RelaySession(MailTransactionCommands, AuthCommand, TlsCommands):
    """One SMTP connection. Reads its listener and config once, at connect."""

    # --- the connection --------------------------------------------------------------------

    async def _handle_client(self) -> None:
        self._relay.session_started(self)
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("client=%s connection lost", self._client_ip)
        except TLSSetupException:
            log.info("client=%s TLS handshake failed", self._client_ip)
        finally:
            # Also on cancellation (client EOF): the stream protocol keeps a half-open transport otherwise.
            if self.transport is not None:
                self.transport.close()
            if self._policy_connected and self._relay.policy is not None:
                self._relay.policy.on_disconnect(self._facts())
            self._relay.session_ended(self)

    async def _serve(self) -> None:
        assert self.session is not None
        peer = self.session.peer
        self._client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if self._setup.config.spec.clients.proxy_protocol and not await read_proxy_header(self):
            return
        if self._listener.tls == "implicit":
            await self._start_tls(take_buffered(self._reader))
        if self._relay.draining:
            self._relay.metrics.rejected.labels(reason="draining").inc()
            await self._hang_up("421 4.3.2 Service shutting down")
            return
        decision = self._setup.admission.on_connect(self._facts())
        verdict = decision.verdict
        if not verdict.refuses and self._relay.policy is not None:
            verdict = await self._relay.policy.on_connect(self._facts())
            self._policy_connected = not verdict.refuses
        if verdict.refuses:
            await self._refuse(verdict, "connect")
            await self._hang_up(f"421 4.7.0 {self.hostname} closing connection")
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        while self.transport is not None and not self._closing:
            await self._one_command()

    # --- command lines ---------------------------------------------------------------------

    async def _read_command(self) -> bytes | None:
        """One command line, or None after answering an over-long one."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed
            while True:
                await self._reader.readexactly(consumed)
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    consumed = more.consumed
            await self._error("500 5.5.6 Line too long", "line_too_long")
            return None

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
