"""Who may use the admin port: health and metrics for anyone who reaches it, everything else for the token.

The admin port is reachable by whatever the network admits (in a pod: every pod the NetworkPolicy lets
through, without one the whole cluster). Probes and Prometheus must work without a credential, but the
queue's details, drain and undrain, the quarantine (senders, recipients, client IPs; release of a message
held for malware) and the fleet's hand-off read mail data or change state: they need the bearer token the
operator generates into a Secret and mounts into the pods (`--admin-token-file`). Without a token file the
relay still serves the protected routes, only never with success (403), so a forgotten flag cannot open
them. The token is compared in constant time, read from its file at each request (a Secret mount updates
it in place when the token is rotated) and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
"""Answered without a credential: probes and scraping."""
MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused at start: they could be guessed over the network."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminTokenError(ValueError):
    """The token file cannot serve as a credential (missing, unreadable, too short)."""


class AdminToken:
    """The bearer token of the admin API, read from a file (None: no token, protected routes answer 403)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            self._read()  # refuse at start, not at the first request

    def _read(self) -> bytes:
        assert self.path is not None
        try:
            token = self.path.read_bytes().strip()
        except OSError as exc:
            raise AdminTokenError(f"admin token file {self.path}: {exc.strerror or exc}") from None
        if len(token) < MIN_TOKEN_LENGTH:
            raise AdminTokenError(
                f"admin token file {self.path}: the token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        return token

    def header(self) -> dict[str, str]:
        """The Authorization header that carries this token (the supervisor asking its workers)."""
        if self.path is None:
            return {}
        return {"Authorization": f"Bearer {self._read().decode('ascii', 'replace')}"}

    def check(self, authorization: str | None) -> str | None:
        """None when `authorization` carries the token; otherwise why not (for the 401/403 body)."""
        if self.path is None:
            return "the admin API is disabled: the relay was started without --admin-token-file"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "missing bearer token (Authorization: Bearer <token>)"
        try:
            expected = self._read()
        except AdminTokenError as exc:
            log.error("%s", exc)
            return "the admin token is unreadable on this relay"
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
            return "wrong bearer token"
        return None


def auth_middleware(token: AdminToken) -> Middleware:
    """An aiohttp middleware: every path outside PUBLIC_PATHS needs the token; 401 (403 when disabled)."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        problem = token.check(request.headers.get("Authorization"))
        if problem is None:
            return await handler(request)
        log.warning("admin API: %s %s refused from %s: %s", request.method, request.path, request.remote, problem)
        if token.path is None:
            return web.Response(status=403, text=f"forbidden: {problem}\n")
        return web.Response(
            status=401, text=f"unauthorized: {problem}\n", headers={"WWW-Authenticate": 'Bearer realm="smtp-relay"'}
        )

    return require_token
