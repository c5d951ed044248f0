"""The relay's SMTP listeners: aiosmtpd's protocol, hardened for a relay that must never be open.

aiosmtpd is kept for what it does well (the STARTTLS transport swap, AUTH challenges, PROXY protocol
parsing, idle timeouts) and its command loop and transaction commands are replaced, because a relay
needs what the stock loop does not give: refusal of bare CR/LF in commands (smuggling), enhanced
status codes on every reply, a chunked DATA reader (see data_reader), admission decisions from a
pure check chain (see admission), drain, and a config snapshot per session so reloads never disturb
a session in flight.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import contextlib
import email.utils
import functools
import logging
import re
import socket
import ssl
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException

from smtp_relay.cleanup.headers import prepend_headers
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import Listener
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.admission import Action, Admission, Facts, Verdict
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.smtp import auth
from smtp_relay.smtp.address import AddressError, parse_path
from smtp_relay.smtp.data_reader import CHUNK_SIZE, DataProblem, read_data, take_buffered
from smtp_relay.smtp.tlsctx import server_context
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger("smtp_relay.smtp")

MessageSink = Callable[[Envelope, bytes], Awaitable[str]]
"""Commits the message durably and returns its queue id; raises to signal failure (the client gets 451)."""

MAX_RECEIVED = 30
"""More Received headers than this means a mail loop (RFC 5321 6.3)."""
COMMAND_LIMIT = 512
"""RFC 5321 4.5.3.1.4, CRLF included."""
COMMAND_LIMITS = {"MAIL": COMMAND_LIMIT + 26 + 10 + 14 + 64, "RCPT": COMMAND_LIMIT + 64, "AUTH": 12288}
"""Extensions lengthen some commands: SIZE, SMTPUTF8, BODY, AUTH= on MAIL; RFC 4954 4 for AUTH."""
MAX_ERRORS = 20
"""Protocol errors tolerated per connection before 421 (bots probing for smuggling or open relay)."""
MAX_AUTH_FAILURES = 3
PROXY_TIMEOUT = 10.0
SESSION_TIMEOUT = 300.0
"""RFC 5321 4.5.3.2.7: the server timeout between commands."""
_RECEIVED_RE = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_UNSAFE_HELO = re.compile(r"[^\x21-\x27\x2a-\x7e\u0080-\U0010ffff]")


@dataclass(frozen=True)
class _Setup:
    """What a config gives new sessions; a reload builds a new one, sessions keep theirs."""

    config: RelayConfig
    admission: Admission
    tls: ssl.SSLContext | None
    max_size: int


@dataclass
class _Bound:
    listener: Listener
    sock: socket.socket
    server: asyncio.AbstractServer | None = None
    start: asyncio.Task[None] | None = field(default=None, repr=False)


class _NoHooks:
    """aiosmtpd wants a handler object; every hook it would call is overridden in RelaySession."""


_NO_HOOKS = _NoHooks()


@functools.lru_cache(maxsize=4)
def _received_date(second: int) -> str:
    """RFC 5322 date of a Unix second, local time; cached because every message of a second shares it."""
    return email.utils.formatdate(second, localtime=True)


def received_header(
    *, helo: str, client_ip: str, hostname: str, esmtp: bool, tls: bool, auth: bool, utf8: bool, now: float
) -> bytes:
    """A RFC 5321 4.4 trace header; RFC 3848 / 6531 protocol names ("with ESMTPSA", "UTF8SMTPS", ...)."""
    proto = ("UTF8SMTP" if utf8 else "ESMTP" if esmtp else "SMTP") + ("S" if tls else "") + ("A" if auth else "")
    ip = client_ip if ":" not in client_ip else f"IPv6:{client_ip}"
    helo_clean = _UNSAFE_HELO.sub("?", helo)[:255] or "unknown"
    date = _received_date(int(now))
    text = f"Received: from {helo_clean} ([{ip}])\r\n\tby {hostname} (relayfleet) with {proto};\r\n\t{date}\r\n"
    return text.encode("utf-8", "surrogateescape")


def count_received(message: bytes) -> int:
    """Received headers in the header section (up to the first empty line)."""
    end = message.find(b"\r\n\r\n")
    headers = message if end < 0 else message[: end + 2]
    return len(_RECEIVED_RE.findall(headers))


class RelaySession(SMTP):
    """One SMTP connection. Reads its listener and config once, at connect."""

    line_length_limit = CHUNK_SIZE
    """aiosmtpd uses this as the stream limit; a big one lets DATA be read in big chunks."""

    def __init__(self, relay: RelayServer, bound: _Bound, setup: _Setup) -> None:
        listener = bound.listener
        super().__init__(
            _NO_HOOKS,
            data_size_limit=setup.max_size,
            enable_SMTPUTF8=True,
            hostname=relay.hostname,
            ident="ESMTP relayfleet",
            tls_context=setup.tls if listener.tls != "none" else None,
            timeout=SESSION_TIMEOUT,
            auth_require_tls=True,
            loop=asyncio.get_running_loop(),
        )
        self._relay = relay
        self._listener = listener
        self._setup = setup
        self._client_ip = ""
        self._errors = 0
        self._auth_failures = 0
        self._closing = False
        self._policy_connected = False
        self._reset_transaction()

    # --- state ---------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._rcpts: list[str] = []
        self._smtputf8 = False
        self._body_8bit = False
        self._declared_size: int | None = None

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        # aiosmtpd calls this after a STARTTLS handshake too (RFC 3207 4.2: forget the transaction).
        if hasattr(self, "_setup"):
            self._reset_transaction()

    def is_secure(self) -> bool:
        return self.session is not None and self.session.ssl is not None

    def auth_user(self) -> str | None:
        if self.session is None or not self.session.authenticated:
            return None
        user = self.session.auth_data
        return user if isinstance(user, str) else None

    def helo(self) -> str:
        return (self.session.host_name or "") if self.session is not None else ""

    def _facts(self, **extra: Any) -> Facts:
        fields: dict[str, Any] = {
            "listener": self._listener,
            "client_ip": self._client_ip,
            "secure": self.is_secure(),
            "auth_user": self.auth_user(),
            "helo": self.helo(),
            "mail_from": self._mail_from,
            "rcpt_count": len(self._rcpts),
        }
        fields.update(extra)
        return Facts(**fields)

    # --- replies ---------------------------------------------------------------------------

    async def _refuse(self, verdict: Verdict, what: str) -> None:
        """Reply with a refusal, count it, and log the transaction outcome."""
        self._relay.metrics.rejected.labels(reason=verdict.reason).inc()
        log.info(
            "refused client=%s listener=%s from=<%s> rcpts=%d %s reason=%s reply=%r",
            self._client_ip,
            self._listener.name,
            self._mail_from if self._mail_from is not None else "",
            len(self._rcpts),
            what,
            verdict.reason,
            verdict.reply,
        )
        await self.push(verdict.reply)

    async def _error(self, reply: str, reason: str) -> None:
        """A protocol error: reply, count, and hang up on clients that keep erring."""
        self._relay.metrics.rejected.labels(reason=reason).inc()
        self._errors += 1
        await self.push(reply)
        if self._errors >= MAX_ERRORS:
            log.info("closing client=%s after %d protocol errors", self._client_ip, self._errors)
            await self._hang_up("421 4.7.0 Too many errors, closing connection")

    async def _out_of_sequence(self, needs: Literal["HELO", "MAIL", "RCPT"]) -> bool:
        """Reply 503 and return True when the command comes before what it `needs` (and all that comes before)."""
        assert self.session is not None
        if not self.session.host_name:
            problem = "Send HELO/EHLO first"
        elif needs != "HELO" and self._mail_from is None:
            problem = "Need MAIL command"
        elif needs == "RCPT" and not self._rcpts:
            problem = "Need RCPT command"
        else:
            return False
        await self._error(f"503 5.5.1 {problem}", "sequence")
        return True

    async def _hang_up(self, reply: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.push(reply)
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # --- the connection --------------------------------------------------------------------

    async def _handle_client(self) -> None:
        self._relay._session_started(self)
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
            self._relay._session_ended(self)

    async def _serve(self) -> None:
        assert self.session is not None
        peer = self.session.peer
        self._client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if self._setup.config.spec.clients.proxy_protocol and not await self._read_proxy_header():
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

    async def _read_proxy_header(self) -> bool:
        """Take the client address from a PROXY v1/v2 header; without a valid one, hang up."""
        self._reset_timeout(PROXY_TIMEOUT)
        data = await get_proxy(self._reader)
        if not data.valid:
            self._relay.metrics.rejected.labels(reason="proxy_protocol").inc()
            log.warning("client=%s invalid PROXY header: %s", self._client_ip, data.error)
            assert self.transport is not None
            self.transport.close()
            return False
        if data.src_addr is not None:  # None for PROXY UNKNOWN / v2 LOCAL: the balancer's own checks
            src = data.src_addr
            self._client_ip = src.decode() if isinstance(src, bytes) else str(src)
        self._reset_timeout()
        return True

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

    # --- commands -------------------------------------------------------------------------

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

    def _auth_offered(self) -> bool:
        return self._listener.auth != "none" and (self.is_secure() or self._listener.allow_insecure_auth)

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

    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.session is not None
        if self._listener.auth == "none":
            await self._error("503 5.5.1 Authentication not enabled", "sequence")
            return
        if not self.session.extended_smtp:
            await self._error("503 5.5.1 Send EHLO first", "sequence")
            return
        if not self._auth_offered():
            await self._error("538 5.7.11 Encryption required for requested authentication mechanism", "tls_required")
            return
        if self.session.authenticated:
            await self._error("503 5.5.1 Already authenticated", "sequence")
            return
        if self._mail_from is not None:
            await self._error("503 5.5.1 AUTH not allowed during a mail transaction", "sequence")
            return
        words = (arg or "").split()
        if not 1 <= len(words) <= 2:
            await self._error("501 5.5.4 Syntax: AUTH mechanism [initial-response]", "syntax")
            return
        mechanism = words[0].upper()
        policy = self._relay.policy
        if policy is not None:
            throttled = policy.before_auth(self._facts())
            if throttled.refuses:
                await self._refuse(throttled, f"AUTH {mechanism}")
                return
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(words[1] if len(words) > 1 else None)
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(words[1] if len(words) > 1 else None)
        else:
            await self._error("504 5.5.4 Unrecognized authentication type", "syntax")
            return
        if credentials is None:
            return  # a malformed exchange, already answered
        user = await auth.verify(self._setup.config.users, *credentials)
        if user is None:
            self._auth_failures += 1
            self._relay.metrics.rejected.labels(reason="auth_failed").inc()
            log.info("auth failed client=%s mechanism=%s", self._client_ip, mechanism)
            reply = "535 5.7.8 Authentication credentials invalid"
            if policy is not None:
                reply = (await policy.auth_failed(self._facts())).reply  # after the brute-force tarpit
            await self.push(reply)
            if self._auth_failures >= MAX_AUTH_FAILURES:
                await self._hang_up("421 4.7.0 Too many failed authentications")
            return
        self.session.authenticated = True
        self.session.auth_data = user  # type: ignore[assignment]  # aiosmtpd types it as None
        if policy is not None:
            policy.auth_succeeded(self._facts())
        log.info("auth ok client=%s user=%s", self._client_ip, user)
        await self.push("235 2.7.0 Authentication successful")

    async def _decode_b64(self, text: str) -> bytes | None:
        if text == "=":
            return b""
        try:
            return b64decode(text.encode("ascii", "strict"), validate=True)
        except (ValueError, UnicodeEncodeError):
            await self._error("501 5.5.2 Cannot decode base64", "syntax")
            return None

    async def _challenge(self, prompt: str) -> bytes | None:
        answer = await self.challenge_auth(prompt)  # answers 501 itself on "*" or bad base64
        return None if answer is MISSING else bytes(answer)

    async def _auth_plain(self, initial: str | None) -> tuple[bytes, bytes] | None:
        blob = await self._challenge("") if initial is None else await self._decode_b64(initial)
        if blob is None:
            return None
        parts = blob.split(b"\x00")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            await self._error("501 5.5.2 Cannot parse PLAIN credentials", "syntax")
            return None
        return parts[1], parts[2]

    async def _auth_login(self, initial: str | None) -> tuple[bytes, bytes] | None:
        login = await self._challenge("Username:") if initial is None else await self._decode_b64(initial)
        if login is None:
            return None
        password = await self._challenge("Password:")
        if password is None:
            return None
        return login, password

    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.session is not None
        if self._relay.draining:
            self._relay.metrics.rejected.labels(reason="draining").inc()
            await self._hang_up("421 4.3.2 Service shutting down")
            return
        if await self._out_of_sequence("HELO"):
            return
        if self._mail_from is not None:
            await self._error("503 5.5.1 Nested MAIL command", "sequence")
            return
        try:
            path = parse_path(arg or "", keyword="FROM:", allow_null=True)
        except AddressError as exc:
            await self._error(f"501 5.5.4 {exc}", "syntax")
            return
        params = dict(path.params)
        if params and not self.session.extended_smtp:
            await self._error("501 5.5.4 Parameters need EHLO", "syntax")
            return
        body = params.pop("BODY", "7BIT")
        smtputf8 = params.pop("SMTPUTF8", False)
        size_text = params.pop("SIZE", None)
        params.pop("AUTH", None)  # RFC 4954 5: accepted, and ignored (we do not trust other MTAs' AUTH=)
        if body not in ("7BIT", "8BITMIME") or smtputf8 not in (False, True):
            await self._error("501 5.5.4 Bad BODY or SMTPUTF8 parameter", "syntax")
            return
        if size_text is not None and (not isinstance(size_text, str) or not size_text.isdigit()):
            await self._error("501 5.5.4 Bad SIZE parameter", "syntax")
            return
        if params:
            await self._error(f"555 5.5.4 Unsupported parameter {next(iter(params))}", "syntax")
            return
        if not smtputf8 and not path.address.isascii():
            await self._error("553 5.6.7 Non-ASCII address needs SMTPUTF8", "syntax")
            return
        size = int(size_text) if isinstance(size_text, str) else None
        facts = self._facts(mail_from=path.address, declared_size=size)
        verdict = self._setup.admission.on_mail(facts).verdict
        if not verdict.refuses and self._relay.policy is not None:
            verdict = await self._relay.policy.on_mail(facts)
        if verdict.refuses:
            await self._refuse(verdict, f"MAIL from=<{path.address}>")
            return
        self._mail_from = path.address
        self._smtputf8 = bool(smtputf8)
        self._body_8bit = body == "8BITMIME"
        self._declared_size = size
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._out_of_sequence("MAIL"):
            return
        try:
            path = parse_path(arg or "", keyword="TO:", allow_null=False)
        except AddressError as exc:
            await self._error(f"501 5.5.4 {exc}", "syntax")
            return
        if path.params:
            await self._error(f"555 5.5.4 Unsupported parameter {next(iter(path.params))}", "syntax")
            return
        if not self._smtputf8 and not path.address.isascii():
            await self._error("553 5.6.7 Non-ASCII address needs SMTPUTF8", "syntax")
            return
        facts = self._facts(rcpt=path.address)
        verdict = self._setup.admission.on_rcpt(facts).verdict  # relay permission first: never an open relay
        if not verdict.refuses and self._relay.policy is not None:
            verdict = await self._relay.policy.on_rcpt(facts)
        if verdict.refuses:
            await self._refuse(verdict, f"RCPT to=<{path.address}>")
            return
        self._rcpts.append(path.address)
        await self.push("250 2.1.5 Ok")

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._out_of_sequence("RCPT"):
            return
        if arg:
            await self._error("501 5.5.4 Syntax: DATA", "syntax")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        result = await read_data(self._reader, self._setup.max_size)
        self._reset_timeout()
        if result.problem is not None:
            reply = {
                DataProblem.TOO_BIG: "552 5.3.4 Message size exceeds fixed maximum message size",
                DataProblem.BARE_CR_LF: "550 5.6.0 Bare CR or LF not allowed in message data, use CRLF",
                DataProblem.NUL: "550 5.6.0 NUL not allowed in message data",
            }[result.problem]
            await self._refuse(
                Verdict(Action.REJECT, int(reply[:3]), reply[4:9], reply[10:], result.problem.value),
                f"DATA size={result.size}",
            )
            self._reset_transaction()
            return
        if count_received(result.content) > MAX_RECEIVED:
            await self._refuse(
                Verdict(Action.REJECT, 554, "5.4.6", "Routing loop: too many Received headers", "routing_loop"),
                f"DATA size={result.size}",
            )
            self._reset_transaction()
            return
        await self._commit(result.content)
        self._reset_transaction()

    async def _commit(self, content: bytes) -> None:
        assert self.session is not None
        now = time.time()
        user = self.auth_user()
        trace = received_header(
            helo=self.helo(),
            client_ip=self._client_ip,
            hostname=self.hostname,
            esmtp=self.session.extended_smtp,
            tls=self.is_secure(),
            auth=user is not None,
            utf8=self._smtputf8,
            now=now,
        )
        envelope = Envelope(
            mail_from=self._mail_from or "",
            rcpt_tos=tuple(self._rcpts),
            client_ip=self._client_ip,
            helo=self.helo(),
            auth_user=user,
            smtputf8=self._smtputf8,
            body_8bit=self._body_8bit,
            received_at=now,
        )
        message = trace + content
        policy = self._relay.policy
        if policy is not None:
            decision = await policy.on_data(self._facts(), message, envelope)
            if decision.verdict.refuses:
                await self._refuse(decision.verdict, f"DATA size={len(message)}")
                return
            if decision.quarantine_reason is not None:
                held = await policy.quarantine(envelope, message, decision)
                log.info(
                    "quarantined id=%s client=%s from=<%s> reason=%s",
                    held,
                    self._client_ip,
                    envelope.mail_from,
                    decision.quarantine_reason,
                )
                await self.push(f"250 2.0.0 Ok: queued as {held}")
                return
            if decision.add_headers:
                message = prepend_headers(message, decision.add_headers)
        # Shielded: a client hanging up mid-commit must not leave a half-written spool entry behind.
        commit = asyncio.ensure_future(self._relay._sink(envelope, message))
        try:
            queue_id = await asyncio.shield(commit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "sink failed client=%s from=<%s> rcpts=%d size=%d",
                self._client_ip,
                envelope.mail_from,
                len(envelope.rcpt_tos),
                len(message),
            )
            self._relay.metrics.rejected.labels(reason="sink_error").inc()
            await self.push("451 4.3.0 Temporary failure, try again later")
            return
        log.info(
            "queued id=%s client=%s listener=%s user=%s from=<%s> rcpts=%d size=%d",
            queue_id,
            self._client_ip,
            self._listener.name,
            user or "-",
            envelope.mail_from,
            len(envelope.rcpt_tos),
            len(message),
        )
        await self.push(f"250 2.0.0 Ok: queued as {queue_id}")


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
        self._sink = sink
        self._reuse_port = reuse_port
        self._setup = self._build(config)
        self._bound: dict[str, _Bound] = {}
        self._sessions: set[RelaySession] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @staticmethod
    def _build(config: RelayConfig) -> _Setup:
        needs_tls = any(lst.tls != "none" for lst in config.spec.listeners)
        if needs_tls and config.tls is None:
            raise ValueError("a listener uses TLS but the config has no TLS certificate")
        tls = server_context(config.tls) if config.tls is not None else None
        return _Setup(
            config=config,
            admission=Admission.from_spec(config.spec),
            tls=tls,
            max_size=config.spec.policy.max_message_bytes,
        )

    @property
    def admission(self) -> Admission:
        """The checks new sessions will use; the policy chain appends to its lists."""
        return self._setup.admission

    # --- listeners ------------------------------------------------------------------------

    def _bind(self, listener: Listener) -> _Bound:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server(
            (self._host, listener.port), family=family, backlog=512, reuse_port=self._reuse_port
        )
        sock.setblocking(False)
        return _Bound(listener=listener, sock=sock)

    async def _serve(self, bound: _Bound) -> None:
        loop = asyncio.get_running_loop()
        bound.server = await loop.create_server(lambda: RelaySession(self, bound, self._setup), sock=bound.sock)
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
        before the server task runs wait in the backlog. A bad TLS certificate raises and changes nothing.
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

    def _session_started(self, session: RelaySession) -> None:
        self._sessions.add(session)
        self._idle.clear()
        self.metrics.active_connections.labels(listener=session._listener.name).inc()

    def _session_ended(self, session: RelaySession) -> None:
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
