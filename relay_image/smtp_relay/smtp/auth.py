"""SMTP AUTH (RFC 4954): the PLAIN and LOGIN exchanges, and the check of credentials against the users Secret.

The password check itself (bcrypt off the event loop, the same cost for every username) is
`smtp.passwords`; this module asks the policy's throttle before the exchange, reserves the attempt
just before the check, and settles it with the outcome, also when the client leaves mid-check.
"""

from __future__ import annotations

import logging
from base64 import b64decode, b64encode

from smtp_relay.smtp.state import SessionState

log = logging.getLogger("smtp_relay.smtp")

MAX_AUTH_FAILURES = 3
"""Failed logins per connection before 421 (the policy's throttle also counts them per client address)."""


class AuthCommand(SessionState):
    """The AUTH verb: offered only over TLS (unless the listener allows otherwise), once per session."""

    def _auth_offered(self) -> bool:
        return self._listener.auth != "none" and (self.is_secure() or self._listener.allow_insecure_auth)

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
            throttled = await policy.before_auth(self._facts())
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
        username, password = credentials
        name = username.decode("utf-8", "surrogateescape")  # never matches a user when not UTF-8
        if policy is not None:
            reserved = await policy.reserve_auth(self._facts())  # refused here, the password is not even checked
            if reserved.refuses:
                await self._refuse(reserved, f"AUTH {mechanism}")
                return
        try:
            ok = await self._relay.passwords.verify(self._setup.users, name, password)
        except BaseException:  # the client left mid-check: the attempt was paid for, it counts as failed
            if policy is not None:
                policy.auth_abandoned(self._facts(), name)
            raise
        if not ok:
            self._auth_failures += 1
            self._relay.metrics.rejected.labels(reason="auth_failed").inc()
            log.info("auth failed client=%s mechanism=%s", self._client_ip, mechanism)
            reply = "535 5.7.8 Authentication credentials invalid"
            if policy is not None:
                reply = (await policy.auth_failed(self._facts(), name)).reply  # after the brute-force tarpit
            await self.push(reply)
            if self._auth_failures >= MAX_AUTH_FAILURES:
                await self._hang_up("421 4.7.0 Too many failed authentications")
            return
        self.session.authenticated = True
        self.session.auth_data = name  # type: ignore[assignment]  # aiosmtpd types it as None
        if policy is not None:
            await policy.auth_succeeded(self._facts(), name)
        log.info("auth ok client=%s user=%s", self._client_ip, name)
        await self.push("235 2.7.0 Authentication successful")

    async def _decode_b64(self, text: str | bytes) -> bytes | None:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        if data == b"=":
            return b""
        try:
            return b64decode(data, validate=True)
        except ValueError:
            await self._error("501 5.5.2 Cannot decode base64", "syntax")
            return None

    async def _challenge(self, prompt: str) -> bytes | None:
        """Send a 334 challenge and decode the answer; None after answering a cancel ("*") or a bad line."""
        await self.push("334 " + b64encode(prompt.encode()).decode())
        answer = await self._read_answer()  # the command line checks apply: length, bare CR/LF
        if answer is None:
            return None
        answer = answer.strip()
        if answer == b"*":
            await self._error("501 5.7.0 Authentication cancelled", "auth_cancelled")
            return None
        return await self._decode_b64(answer)

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
