"""Password checks against the users Secret: the same work for every username, off the event loop, bounded.

The Secret maps usernames to plaintext passwords or bcrypt hashes. bcrypt is deliberately slow (tens to
hundreds of ms), so its checks run in a small thread pool behind a semaphore: a flood of AUTH lines
queues (cancellable while waiting) instead of pinning every core or stalling the event loop.

Timing must not tell which usernames exist, nor how their password is stored. When the Secret holds
any bcrypt hash, every check costs exactly one bcrypt at the highest cost found there: a bcrypt user
against their own hash, an unknown user, a plaintext user (compared in constant time as well) and a
user with a malformed hash against a dummy hash of that cost. A Secret of plaintext passwords only
costs one constant-time comparison for every username, known or not.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import bcrypt

from smtp_relay.telemetry.metrics import RelayMetrics

log = logging.getLogger("smtp_relay.smtp")

_BCRYPT = re.compile(r"^\$2[abxy]?\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}$")
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NO_SUCH_USER = secrets.token_bytes(32)
"""What a password is compared with when nothing is stored for the username (plaintext-only Secrets)."""

DEFAULT_CONCURRENCY = max(1, min(4, (os.cpu_count() or 2) // 2))
"""bcrypt checks at once per relay process: half the cores, so logins never take all of them."""


def _dummy_hash(cost: int) -> bytes:
    """A well-formed bcrypt hash of that cost that no password matches: checking it costs a real bcrypt.

    A real salt (its last character carries only 2 bits: a random one is refused before any hashing)
    and a random digest; computing a real hash here would cost a bcrypt at every reload.
    """
    digest = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(rounds=cost) + digest.encode()


@dataclass(frozen=True)
class UserTable:
    """One config's users: plaintext passwords, bcrypt hashes, and the dummy hash unknown users cost."""

    plain: Mapping[str, bytes]
    hashed: Mapping[str, bytes]
    dummy: bytes | None
    """None when the Secret holds no bcrypt hash (then no check pays for one)."""

    @classmethod
    def from_users(cls, users: Mapping[str, str]) -> UserTable:
        plain: dict[str, bytes] = {}
        hashed: dict[str, bytes] = {}
        costs: list[int] = []
        for name, stored in users.items():
            if not stored.startswith("$2"):
                plain[name] = stored.encode()
                continue
            match = _BCRYPT.match(stored)
            if match is None:
                log.warning("users Secret: the bcrypt hash of user %s is malformed; that user cannot log in", name)
                costs.append(0)
                continue
            costs.append(int(match["cost"]))
            hashed[name] = stored.encode()
        cost = max(costs, default=0)
        dummy = _dummy_hash(max(cost, 4)) if costs else None
        return cls(plain=plain, hashed=hashed, dummy=dummy)


def _bcrypt_matches(password: bytes, hashed: bytes) -> tuple[bool, bool]:
    """(matches, hashed): hashed is False when bcrypt refused before hashing (a password over 72 bytes)."""
    try:
        return bcrypt.checkpw(password, hashed), True
    except ValueError:
        return False, False  # refused before any hashing, for every user alike


class PasswordChecker:
    """Verifies AUTH credentials for every session of a relay; the pool and the semaphore outlive reloads."""

    def __init__(self, metrics: RelayMetrics, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bcrypt")
        self._slots = asyncio.Semaphore(concurrency)

    async def verify(self, users: UserTable, name: str, password: bytes) -> bool:
        """True when `password` is `name`'s; one bcrypt (or, without bcrypt users, one comparison) either way."""
        plain = users.plain.get(name)
        matches_plain = hmac.compare_digest(plain if plain is not None else _NO_SUCH_USER, password)
        if users.dummy is None:
            self._metrics.auth_password_checks.labels(kind="plain").inc()
            return plain is not None and matches_plain
        hashed = users.hashed.get(name)
        matches_hash = await self._bcrypt(password, hashed if hashed is not None else users.dummy)
        return (hashed is not None and matches_hash) or (plain is not None and matches_plain)

    async def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        async with self._slots:  # waiting here is cancellable and costs no CPU
            loop = asyncio.get_running_loop()
            matches, ran = await loop.run_in_executor(self._pool, _bcrypt_matches, password, hashed)
        if ran:  # counts the hashing bcrypt really did, the work that must not depend on the username
            self._metrics.auth_password_checks.labels(kind="bcrypt").inc()
        return matches

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
