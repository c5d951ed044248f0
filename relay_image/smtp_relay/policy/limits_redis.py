"""The fleet's counters in Redis: each decision is one Lua script (policy.limits_scripts), one round trip.

Every call is bounded by the spec's timeout (connect, AUTH and the reply), never retried here, and any
failure (refused, timed out, a wrong password, a script error) becomes `RedisUnavailable`, so the caller
decides locally instead: a hung or lost Redis costs a session at most one timeout.

Decisions travel on one connection (policy.limits_wire): the commands that sessions and deliveries ask for
during one pass of the event loop leave in one write, and replies come back in order, so concurrent
decisions are pipelined as the spool group-commits its fsyncs, with no pipeline to collect and no task per
decision. Scripts run by hash (EVALSHA); one Redis does not know yet (a restart) is sent once in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smtp_relay.config.limits_spec import RedisSpec, split_address
from smtp_relay.config.units import parse_duration
from smtp_relay.policy import limits_scripts
from smtp_relay.policy.limits_wire import Arg, RedisWire, ReplyError

PENDING_TTL_MS = 60_000
"""How long a reserved password check counts as under way if its pod dies before settling it."""


class RedisUnavailable(Exception):
    """Redis did not answer a decision in time, or refused it; the message says why, without secrets."""


@dataclass(frozen=True)
class RedisTarget:
    """Where the counters are and how to log in: spec.limits.redis joined with its Secrets."""

    address: str
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)
    timeout: float = 0.25

    @classmethod
    def from_spec(cls, spec: RedisSpec, username: str, password: str, ca_pem: bytes | None) -> RedisTarget:
        return cls(spec.address, spec.tls, username, password, ca_pem, parse_duration(spec.timeout))


def describe(exc: BaseException) -> str:
    """A log line's reason: what went wrong, naming the Secret when the credentials were refused."""
    if "WRONGPASS" in str(exc) or "NOAUTH" in str(exc) or "invalid password" in str(exc):
        return f"the credentials of spec.limits.redis.secretName were refused ({exc})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer within spec.limits.redis.timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA-1, as EVALSHA names it."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


RATE, PACE = Script.of(limits_scripts.RATE), Script.of(limits_scripts.PACE)
AUTH_RESERVE, AUTH_FAILURE = Script.of(limits_scripts.AUTH_RESERVE), Script.of(limits_scripts.AUTH_FAILURE)
AUTH_SUCCESS = Script.of(limits_scripts.AUTH_SUCCESS)


def tls_context(target: RedisTarget) -> ssl.SSLContext | None:
    """TLS to Redis: the CA of spec.limits.redis.caSecret (else the system's), the host name verified."""
    if not target.tls:
        return None
    return ssl.create_default_context(cadata=target.ca_pem.decode() if target.ca_pem else None)


class RedisLimits:
    """The counters of one SmtpRelay in one Redis; keys start with `relayfleet:{namespace/name}:`."""

    def __init__(self, target: RedisTarget, namespace: str, name: str) -> None:
        self.target = target
        self.prefix = self.key_prefix(namespace, name)
        host, port = split_address(target.address)
        self.wire = RedisWire(host, port, username=target.username, password=target.password, tls=tls_context(target))

    @staticmethod
    def key_prefix(namespace: str, name: str) -> str:
        """Every key of one SmtpRelay: two relays sharing a Redis never mix; the hash tag keeps them in one slot."""
        return f"relayfleet:{{{namespace}/{name}}}:"

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script, bounded by the timeout; a hung Redis's connection is dropped, so no late reply is
        taken for a later decision's."""
        try:
            async with asyncio.timeout(self.target.timeout):
                try:
                    return await self.wire.call("EVALSHA", script.sha, len(keys), *keys, *args)
                except ReplyError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    return await self.wire.call("EVAL", script.source, len(keys), *keys, *args)
        except TimeoutError as exc:
            self.wire.drop()
            raise RedisUnavailable(describe(exc)) from exc
        except (ReplyError, OSError) as exc:
            raise RedisUnavailable(describe(exc)) from exc

    async def take(self, counters: Sequence[tuple[str, int, int]], cost: int) -> int:
        """Count `cost` messages in every counter (key, limit, window ms) if all have room: 0, else the
        1-based number of the first counter without room (nothing counted). Cost 0 only asks."""
        args: list[Arg] = [cost]
        for _, limit, window_ms in counters:
            args += [limit, window_ms]
        keys = [self.prefix + "rl:" + key for key, _, _ in counters]
        return int(await self._run(RATE, keys, args))

    async def pace(self, destination: str, rates: Sequence[tuple[str, float]], max_wait: float) -> tuple[bool, float]:
        """One shaping admission of `destination` under its rates (name, seconds the next admission moves on):
        (True, wait) admitted after `wait` seconds, or (False, delay) with its place in the destination's
        line `delay` seconds from now (in Redis's clock: pod clocks do not matter)."""
        base = f"{self.prefix}shape:{destination}:"
        keys = [base + "line", *(base + name for name, _ in rates)]
        intervals = [round(seconds * 1e6) for _, seconds in rates]
        args: list[Arg] = [round(max_wait * 1e6), max(intervals, default=0), *intervals]
        admitted, delay_us = await self._run(PACE, keys, args)
        return bool(admitted), int(delay_us) / 1e6

    def _auth_keys(self, client_ip: str) -> list[str]:
        base = f"{self.prefix}auth:{client_ip}:"
        return [base + "f", base + "p", base + "b"]

    async def auth_allowed(self, client_ip: str, max_failures: int, window: float, *, reserve: bool) -> bool:
        """May the address try a password (failures and checks under way below the maximum, no cool-down)?
        With `reserve`, an allowed check is counted as under way in the same step."""
        args: list[Arg] = [max_failures, int(window * 1000), PENDING_TTL_MS, "1" if reserve else "0"]
        return int(await self._run(AUTH_RESERVE, self._auth_keys(client_ip), args)) == 1

    async def auth_failure(
        self, client_ip: str, username: str, max_failures: int, window: float, cooldown: float
    ) -> tuple[int, bool]:
        """Settle a check as failed: (failures of the address in the window, blocked now)."""
        member = f"{os.urandom(6).hex()}:{username}"
        args: list[Arg] = [max_failures, int(window * 1000), int(cooldown * 1000), member]
        failures, blocked = await self._run(AUTH_FAILURE, self._auth_keys(client_ip), args)
        return int(failures), bool(blocked)

    async def auth_success(self, client_ip: str, username: str) -> None:
        await self._run(AUTH_SUCCESS, self._auth_keys(client_ip), [username])

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.target.timeout):
                await self.wire.call("PING")
        except TimeoutError as exc:
            self.wire.drop()
            raise RedisUnavailable(describe(exc)) from exc
        except (ReplyError, OSError) as exc:
            raise RedisUnavailable(describe(exc)) from exc

    async def close(self) -> None:
        await self.wire.close()
