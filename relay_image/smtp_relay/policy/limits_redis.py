"""The fleet's counters in Redis: each decision is one Lua script (policy.limits_scripts), one round trip.

Every call is bounded by the spec's timeout (connect, read and the whole call), never retried here, and
any failure (refused, timed out, a wrong password, a script error) becomes `RedisUnavailable`, so the
caller decides locally instead: a hung or lost Redis costs a session at most one timeout.

Message counts and shaping paces are pipelined: the decisions that sessions and deliveries ask for during
one pass of the event loop go to Redis as one pipeline, one write and one read, as the spool group-commits
its fsyncs (a few pipelines may be on the wire at once, so a decision rarely waits for another batch's
reply). A lone redis-py
command costs ~200 us of CPU of its own; shared by a batch, that is what keeps fleet-wide limits within
a few percent of local ones at full load.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

from smtp_relay.config.limits_spec import RedisSpec, split_address
from smtp_relay.config.units import parse_duration
from smtp_relay.policy import limits_scripts

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
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return f"the credentials of spec.limits.redis.secretName were refused ({exc})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer within spec.limits.redis.timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_Decision = tuple[AsyncScript, list[str], list[int | str], "asyncio.Future[Any]"]
MAX_BATCH = 256
"""Decisions in one pipeline at most (a larger backlog goes in the next)."""
MAX_IN_FLIGHT = 4
"""Pipelines on the wire at once: decisions asked while one is out need not wait for its reply."""


class RedisLimits:
    """The counters of one SmtpRelay in one Redis; keys start with `relayfleet:{namespace/name}:`."""

    def __init__(self, target: RedisTarget, namespace: str, name: str) -> None:
        self.target = target
        self.prefix = self.key_prefix(namespace, name)
        host, port = split_address(target.address)
        self._client = aioredis.Redis(
            host=host,
            port=port,
            username=target.username or None,
            password=target.password or None,
            ssl=target.tls,
            ssl_ca_data=target.ca_pem.decode() if target.ca_pem else None,
            socket_timeout=target.timeout,
            socket_connect_timeout=target.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._rate = self._client.register_script(limits_scripts.RATE)
        self._auth_reserve = self._client.register_script(limits_scripts.AUTH_RESERVE)
        self._auth_failure = self._client.register_script(limits_scripts.AUTH_FAILURE)
        self._auth_success = self._client.register_script(limits_scripts.AUTH_SUCCESS)
        self._pace = self._client.register_script(limits_scripts.PACE)
        self._waiting: list[_Decision] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._collecting = False

    @staticmethod
    def key_prefix(namespace: str, name: str) -> str:
        """Every key of one SmtpRelay: two relays sharing a Redis never mix; the hash tag keeps them in one slot."""
        return f"relayfleet:{{{namespace}/{name}}}:"

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        try:
            async with asyncio.timeout(self.target.timeout):
                return await script(keys=keys, args=args)
        except ResponseError as exc:
            raise RedisUnavailable(describe(exc)) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(describe(exc)) from exc

    async def take(self, counters: Sequence[tuple[str, int, int]], cost: int) -> int:
        """Count `cost` messages in every counter (key, limit, window ms) if all have room: 0, else the
        1-based number of the first counter without room (nothing counted). Cost 0 only asks."""
        args: list[int | str] = [cost]
        for _, limit, window_ms in counters:
            args += [limit, window_ms]
        keys = [self.prefix + "rl:" + key for key, _, _ in counters]
        return int(await self._batched(self._rate, keys, args))

    async def pace(self, destination: str, rates: Sequence[tuple[str, float]], max_wait: float) -> tuple[bool, float]:
        """One shaping admission of `destination` under its rates (name, seconds the next admission moves on):
        (True, wait) admitted after `wait` seconds, or (False, delay) with its place in the destination's
        line `delay` seconds from now (in Redis's clock: pod clocks do not matter)."""
        base = f"{self.prefix}shape:{destination}:"
        keys = [base + "line", *(base + name for name, _ in rates)]
        intervals = [round(seconds * 1e6) for _, seconds in rates]
        args: list[int | str] = [round(max_wait * 1e6), max(intervals, default=0), *intervals]
        admitted, delay_us = await self._batched(self._pace, keys, args)
        return bool(admitted), int(delay_us) / 1e6

    async def _batched(self, script: AsyncScript, keys: list[str], args: list[int | str]) -> Any:
        """Run `script` in the next pipeline (one per loop pass, MAX_IN_FLIGHT at most on the wire)."""
        decided: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((script, keys, args, decided))
        if not self._collecting and len(self._senders) < MAX_IN_FLIGHT:
            self._collecting = True
            sender = asyncio.get_running_loop().create_task(self._send_batches())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await decided

    async def _send_batches(self) -> None:
        """Collect what sessions ask during one loop pass and send it as one pipeline; then, if more waited
        meanwhile and no other sender collects, go on with those (at most MAX_IN_FLIGHT pipelines at once)."""
        while True:
            await asyncio.sleep(0)  # let the sessions of this loop pass add theirs
            self._collecting = False
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            if not batch:
                return
            try:
                results = await self._pipeline(batch)
            except (RedisError, OSError, TimeoutError) as exc:
                batch, self._waiting = batch + self._waiting, []  # those waiting would only wait longer
                results = [RedisUnavailable(describe(exc))] * len(batch)
            for (_, _, _, decided), result in zip(batch, results, strict=True):
                if decided.done():
                    continue
                if isinstance(result, BaseException):
                    error = result if isinstance(result, RedisUnavailable) else RedisUnavailable(describe(result))
                    decided.set_exception(error)
                else:
                    decided.set_result(result)
            if not self._waiting or self._collecting:
                return
            self._collecting = True

    async def _pipeline(self, batch: list[_Decision]) -> list[Any]:
        """One pipeline of scripts by hash (those Redis does not know yet are loaded once, then all resent)."""
        async with asyncio.timeout(self.target.timeout):
            for attempt in range(2):
                pipe = self._client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                unknown = {batch[i][0] for i, r in enumerate(results) if isinstance(r, NoScriptError)}
                if attempt == 0 and unknown:
                    for script in unknown:
                        await self._client.script_load(script.script)
                    continue
                return list(results)
        raise AssertionError("unreachable")  # pragma: no cover

    def _auth_keys(self, client_ip: str) -> list[str]:
        base = f"{self.prefix}auth:{client_ip}:"
        return [base + "f", base + "p", base + "b"]

    async def auth_allowed(self, client_ip: str, max_failures: int, window: float, *, reserve: bool) -> bool:
        """May the address try a password (failures and checks under way below the maximum, no cool-down)?
        With `reserve`, an allowed check is counted as under way in the same step."""
        args: list[int | str] = [max_failures, int(window * 1000), PENDING_TTL_MS, "1" if reserve else "0"]
        return int(await self._run(self._auth_reserve, self._auth_keys(client_ip), args)) == 1

    async def auth_failure(
        self, client_ip: str, username: str, max_failures: int, window: float, cooldown: float
    ) -> tuple[int, bool]:
        """Settle a check as failed: (failures of the address in the window, blocked now)."""
        member = f"{os.urandom(6).hex()}:{username}"
        args: list[int | str] = [max_failures, int(window * 1000), int(cooldown * 1000), member]
        failures, blocked = await self._run(self._auth_failure, self._auth_keys(client_ip), args)
        return int(failures), bool(blocked)

    async def auth_success(self, client_ip: str, username: str) -> None:
        await self._run(self._auth_success, self._auth_keys(client_ip), [username])

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.target.timeout):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(describe(exc)) from exc

    async def close(self) -> None:
        for sender in list(self._senders):
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        for _, _, _, decided in self._waiting:
            decided.cancel()
        await self._client.aclose()
