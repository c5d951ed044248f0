"""What the queue tests share: envelopes and segment listings for the spool tests; a scripted fake
delivery and a spool + scheduler pair, run in virtual time, for the scheduler and bouncer tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Envelope, Outcome, StoredMessage
from smtp_relay.queue.scheduler import Scheduler
from smtp_relay.queue.spool.store import Spool
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.harness.metrics import sample as registry_sample

# ----------------------------------------------------------------- spool


def envelope(*rcpts: str, sender: str = "alice@example.org") -> Envelope:
    return Envelope(
        sender, rcpts or ("bob@example.net",), client_ip="127.0.0.1", helo="client.test", received_at=1_700_000_000.0
    )


def segment_files(root: Path) -> list[Path]:
    return sorted(root.glob("seg-*.dat"))


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "queue")
    assert await s.open() == []
    yield s
    await s.close()


class Counter:
    """Counts calls of an os function made from any thread, remembering the fds."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.fds: list[str] = []

    def __call__(self, fd: int) -> None:
        self.fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.real(fd)

    @property
    def calls(self) -> int:
        return len(self.fds)


# ----------------------------------------------------------------- scheduler

START = 1_000_000.0
ORIGINAL = b"From: alice@example.org\r\nSubject: report\r\nMessage-ID: <m1@example.org>\r\n\r\nsecret body\r\n"

Script = Callable[[StoredMessage, list[str], int], Mapping[str, Outcome]]


@dataclass
class Call:
    at: float
    message: StoredMessage
    data: bytes
    recipients: list[str]


@dataclass
class FakeDelivery:
    """Answers per a script (message, recipients, n-th call for that message) and records every call."""

    script: Script
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, message: StoredMessage, data: bytes, recipients: list[str]) -> Mapping[str, Outcome]:
        n = sum(1 for c in self.calls if c.message.id == message.id)
        self.calls.append(Call(asyncio.get_running_loop().time(), message, data, list(recipients)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.script(message, recipients, n)
        finally:
            self.in_flight -= 1
            self.event.set()

    def of(self, message: StoredMessage) -> list[Call]:
        return [c for c in self.calls if c.message.id == message.id]

    def bounces(self) -> list[Call]:
        return [c for c in self.calls if c.message.envelope.is_bounce]


def deliver_all(message: StoredMessage, recipients: list[str], n: int) -> Mapping[str, Outcome]:
    return {r: Outcome.delivered("mx.test:25") for r in recipients}


@contextlib.asynccontextmanager
async def relay(
    tmp_path: Path,
    delivery: FakeDelivery,
    retry: RetrySpec,
    *,
    max_active: int = 200,
    run: bool = True,
    active_window: int = 10_000,
) -> AsyncIterator[tuple[Spool, Scheduler, RelayMetrics]]:
    loop = asyncio.get_running_loop()
    metrics = RelayMetrics()
    spool = Spool(tmp_path / "queue", active_window=active_window)
    scheduler = Scheduler(
        spool, delivery, retry, hostname="relay.test", metrics=metrics, max_active=max_active, clock=loop.time
    )
    for message in await spool.open():
        scheduler.submit(message)
    task = asyncio.create_task(scheduler.run()) if run else None
    try:
        yield spool, scheduler, metrics
    finally:
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await scheduler.stop()
        await spool.close()


async def submit(
    spool: Spool, scheduler: Scheduler, *rcpts: str, sender: str = "alice@example.org", is_bounce: bool = False
) -> StoredMessage:
    env = Envelope(sender, rcpts, received_at=asyncio.get_running_loop().time(), is_bounce=is_bounce)
    message = await spool.commit(env, ORIGINAL)
    scheduler.submit(message)
    return message


async def until(predicate: Callable[[], bool], delivery: FakeDelivery, limit: float = 100_000) -> None:
    """Wait (in virtual time) until the predicate holds after some delivery call.

    No settling sleep is needed: a delivery returns into the scheduler's attempt task, which records
    the outcome (finish, or journal and defer) before it next yields, so by the time this task runs
    again the outcome is there. Only a bounce waits for its commit, and is then delivered itself.
    """
    async with asyncio.timeout(limit):
        while not predicate():
            delivery.event.clear()
            await delivery.event.wait()


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    return registry_sample(metrics.registry, name, **labels)
