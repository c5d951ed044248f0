"""Checking SMTP AUTH credentials against the users Secret (plaintext passwords or bcrypt hashes).

bcrypt is deliberately slow (tens to hundreds of ms), so it runs in a worker thread: one login must
not stall every other session of the event loop. Plaintext compares in constant time, and unknown
users cost the same as a wrong password, so timing tells nothing about which usernames exist.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping

import bcrypt

_DUMMY = b"relayfleet-no-such-user"


def _check_sync(stored: str | None, password: bytes) -> bool:
    if stored is None:
        hmac.compare_digest(_DUMMY, password)
        return False
    if stored.startswith("$2"):
        try:
            return bcrypt.checkpw(password, stored.encode())
        except ValueError:
            return False  # a malformed hash in the Secret logs in nobody
    return hmac.compare_digest(stored.encode(), password)


async def verify(users: Mapping[str, str], username: bytes, password: bytes) -> str | None:
    """The username when the password matches, else None."""
    try:
        name = username.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stored = users.get(name)
    if stored is not None and stored.startswith("$2"):
        ok = await asyncio.get_running_loop().run_in_executor(None, _check_sync, stored, password)
    else:
        ok = _check_sync(stored, password)
    return name if ok else None
