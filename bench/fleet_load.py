"""Mail sent to a fleet's pods while it changes, and the account of it: accepted, delivered, lost, duplicates.

Why: "no message that got a 250 is lost" is checked by counting, per Message-ID, what each relay answered 250
to and what the upstream received, while pods drain, stop and come back. Shared by bench/scale_down and the
fleet end-to-end tests (tests may import the benchmarks, never the reverse).

The load goes to the pods' own addresses, as a Service would spread it: to the pods that are Ready now (the
list is refreshed from the API every `refresh` s), round robin. A client that is refused (421 of a draining
pod, a refused connection) sends the same message again to another pod, as a mail client retries another MX.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from smtp_relay.queue.spool.store import Spool

Target = tuple[str, int]
Targets = Callable[[], Awaitable[list[Target]]]


@dataclass
class LoadReport:
    """What the load generator saw: each Message-ID that got a 250, and from which pod address."""

    accepted: dict[str, str] = field(default_factory=dict)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Replies and errors that made a client try again, by kind (e.g. "421", "ConnectionRefusedError")."""
    seconds: float = 0.0


@dataclass(frozen=True)
class Account:
    """Accepted against delivered, per Message-ID."""

    accepted: int
    delivered: int
    lost: list[str]
    duplicates: int
    unexpected: int
    """Delivered Message-IDs no relay answered 250 to (a 250 lost on the way back: the client sent it again)."""


def account(accepted: Iterable[str], delivered_ids: Iterable[str]) -> Account:
    """Lost: got a 250, never arrived. Duplicates: arrivals beyond the first of a Message-ID."""
    wanted, seen = set(accepted), collections.Counter(delivered_ids)
    return Account(
        accepted=len(wanted),
        delivered=len(wanted & set(seen)),
        lost=sorted(wanted - set(seen)),
        duplicates=sum(n - 1 for n in seen.values()),
        unexpected=len(set(seen) - wanted),
    )


def message(n: int, run: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"] = "load@example.com", "sink@example.net"
    msg["Subject"], msg["Message-ID"] = f"load {n}", f"<{n}.{run}@fleet-load.test>"
    msg.set_content(f"message {n} of run {run}\n" + "x" * 512)
    return msg


async def send_load(
    targets: Targets,
    total: int,
    *,
    concurrency: int = 8,
    per_connection: int = 5,
    refresh: float = 0.2,
    deadline: float = 120.0,
    rate: float | None = None,
    report: LoadReport | None = None,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """Send `total` messages over `concurrency` clients, each keeping a connection for `per_connection` ones,
    as fast as they are accepted or at about `rate` per second in all; `report` (filled as the load runs) lets a
    caller act when part of it was accepted; once `stop` is set, each client ends after its current message."""
    report = report if report is not None else LoadReport()
    run, started = uuid.uuid4().hex[:8], time.monotonic()
    numbers = iter(range(total))
    current: list[Target] = []
    turn = itertools.count()

    async def follow() -> None:
        while True:
            found = await targets()
            current[:] = found
            await asyncio.sleep(refresh)

    async def client() -> None:
        pending: EmailMessage | None = None
        while time.monotonic() - started < deadline:
            if pending is None:
                n = next(numbers, None) if stop is None or not stop.is_set() else None
                if n is None:
                    return
                pending = message(n, run)
            if not current:
                await asyncio.sleep(0.05)
                continue
            host, port = current[next(turn) % len(current)]
            try:
                async with aiosmtplib.SMTP(hostname=host, port=port, timeout=15, start_tls=False) as smtp:
                    for _ in range(per_connection):
                        await smtp.send_message(pending)
                        report.accepted[str(pending["Message-ID"])] = host
                        if rate:
                            await asyncio.sleep(concurrency / rate)
                        n = next(numbers, None) if stop is None or not stop.is_set() else None
                        if n is None:
                            pending = None
                            return
                        pending = message(n, run)
            except aiosmtplib.SMTPResponseException as exc:
                report.refused[str(exc.code)] += 1
                await asyncio.sleep(0.02)
            except (aiosmtplib.SMTPException, OSError) as exc:
                report.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.02)
        raise TimeoutError(f"the load did not finish within {deadline}s ({len(report.accepted)} accepted)")

    follower = asyncio.create_task(follow())
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    report.seconds = time.monotonic() - started
    return report


def api_targets(
    session: aiohttp.ClientSession, api: str, token: str, namespace: str, selector: str, port: int
) -> Targets:
    """The Ready pods of `selector` at their pod IPs and the listener's `port`, as the API lists them."""

    async def targets() -> list[Target]:
        url = f"{api}/api/v1/namespaces/{namespace}/pods"
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(url, params={"labelSelector": selector}, headers=headers) as reply:
            items: list[dict[str, Any]] = (await reply.json()).get("items") or []
        return [(str(p["status"]["podIP"]), port) for p in items if _ready(p)]

    return targets


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return bool(ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"))


async def stranded(folder: Path) -> int:
    """Unfinished messages in a relay's spool folder (its `--spool`), read through the spool's public API.

    Opening takes the spool's lock: only for folders no relay runs on any more."""
    queue = folder / "queue"
    if not queue.is_dir():
        return 0
    spool = Spool(queue)
    try:
        return len(await spool.open())
    finally:
        await spool.close()
