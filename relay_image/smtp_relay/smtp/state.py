"""What every part of one SMTP session shares: its config snapshot, the transaction so far, and the replies.

The command modules (transaction, auth, tls) are mixins over `SessionState`, and `session.RelaySession`
combines them: aiosmtpd dispatches a verb to the `smtp_<VERB>` method it finds on the instance, so
each verb stays a method while living beside the code of its own concern. The server is seen through
`SessionHost`, so sessions never import the server that creates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiosmtpd.smtp import SMTP

from smtp_relay.cleanup.dkim import DkimSigner
from smtp_relay.config.resolved import RelayConfig
from smtp_relay.config.spec import Listener
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.admission import Admission
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.verdict import Facts, Verdict
from smtp_relay.smtp.data_reader import CHUNK_SIZE
from smtp_relay.smtp.passwords import PasswordChecker, UserTable
from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger("smtp_relay.smtp")

MessageSink = Callable[[Envelope, bytes], Awaitable[str]]
"""Commits the message durably and returns its queue id; raises to signal failure (the client gets 451)."""

COMMAND_LIMIT = 512
"""RFC 5321 4.5.3.1.4, CRLF included."""
COMMAND_LIMITS = {"MAIL": COMMAND_LIMIT + 26 + 10 + 14 + 64, "RCPT": COMMAND_LIMIT + 64, "AUTH": 12288}
"""Extensions lengthen some commands: SIZE, SMTPUTF8, BODY, AUTH= on MAIL; RFC 4954 4 for AUTH."""

MAX_ERRORS = 20
"""Protocol errors tolerated per connection before 421 (bots probing for smuggling or open relay)."""
SESSION_TIMEOUT = 300.0
"""RFC 5321 4.5.3.2.7: the server timeout between commands."""


@dataclass(frozen=True)
class SessionSetup:
    """What a config gives new sessions; a reload builds a new one, sessions keep theirs."""

    config: RelayConfig
    admission: Admission
    tls: ssl.SSLContext | None
    max_size: int
    users: UserTable
    signer: DkimSigner | None = None
    """The DKIM signer of the config's SendingDomains (None: no domain has keys)."""


class SessionHost(Protocol):
    """What a session uses of the server that accepted it (RelayServer); read at each use, as draining changes."""

    @property
    def hostname(self) -> str: ...
    @property
    def policy(self) -> PolicyEngine | None: ...
    @property
    def metrics(self) -> RelayMetrics: ...
    @property
    def draining(self) -> bool: ...
    @property
    def sink(self) -> MessageSink: ...
    @property
    def passwords(self) -> PasswordChecker: ...
    def session_started(self, session: SessionState) -> None: ...
    def session_ended(self, session: SessionState) -> None: ...


class _NoHooks:
    """aiosmtpd wants a handler object; every hook it would call is overridden in RelaySession."""


_NO_HOOKS = _NoHooks()


class SessionState(SMTP):
    """One SMTP connection's state. Reads its listener and config once, at connect."""

    line_length_limit = CHUNK_SIZE
    """aiosmtpd uses this as the stream limit; a big one lets DATA be read in big chunks."""

    def __init__(self, relay: SessionHost, listener: Listener, setup: SessionSetup) -> None:
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
        self._finished = False
        self._counted: tuple[PolicyEngine, str] | None = None
        """The policy engine and the address this connection is counted under, until its socket closes."""
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

    # --- reading -----------------------------------------------------------------------------

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

    async def _read_answer(self) -> bytes | None:
        """One line answering a challenge (AUTH), checked as a command line; None after answering a bad one."""
        line = await self._read_command()
        if line is None:
            return None
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            await self._error("500 5.5.2 Bare CR or LF not allowed, use CRLF", "bare_cr_lf")
            return None
        if len(line) > COMMAND_LIMITS["AUTH"]:
            await self._error("500 5.5.6 Line too long", "line_too_long")
            return None
        return line[:-2]

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
