"""The scheduler on a real spool, in virtual time: retries, bounces, expiry, partial success, drain."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Envelope, Outcome, QueueState, StoredMessage
from smtp_relay.queue.scheduler import Scheduler, _delivery_summary
from smtp_relay.queue.spool.store import Spool
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.harness.metrics import sample as registry_sample

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
    tmp_path: Path, delivery: FakeDelivery, retry: RetrySpec, *, max_active: int = 200, run: bool = True
) -> AsyncIterator[tuple[Spool, Scheduler, RelayMetrics]]:
    loop = asyncio.get_running_loop()
    metrics = RelayMetrics()
    spool = Spool(tmp_path / "queue")
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
    envelope = Envelope(sender, rcpts, received_at=asyncio.get_running_loop().time(), is_bounce=is_bounce)
    message = await spool.commit(envelope, ORIGINAL)
    scheduler.submit(message)
    return message


async def until(predicate: Callable[[], bool], delivery: FakeDelivery, limit: float = 100_000) -> None:
    """Wait (in virtual time) until the predicate holds after some delivery call."""
    async with asyncio.timeout(limit):
        while not predicate():
            delivery.event.clear()
            await delivery.event.wait()
            await asyncio.sleep(0.01)  # let the scheduler record the outcome


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    return registry_sample(metrics.registry, name, **labels)


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def dsn_statuses(data: bytes) -> dict[str, str]:
    groups = parts(parts(parse(data))[1])[1:]
    return {g["Final-Recipient"].split("; ", 1)[1]: g["Status"] for g in groups}


@pytest.mark.looptime(start=START)
async def test_retries_follow_the_schedule_and_last_interval_repeats(tmp_path: Path) -> None:
    delivery = FakeDelivery(
        lambda m, rcpts, n: {r: Outcome.delivered() if n >= 3 else Outcome.temporary(451, "4.3.0 busy") for r in rcpts}
    )
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1m", "5m"], max_age="1d")) as (spool, sched, metrics):
        message = await submit(spool, sched, "bob@example.net")
        await until(lambda: spool.depth() == 0, delivery)
        times = [c.at - START for c in delivery.of(message)]
        assert times == pytest.approx([0, 60, 360, 660], abs=1)
        assert message.attempts == 4
        assert delivery.bounces() == []
        assert sample(metrics, "smtp_relay_deferred_recipients_total") == 3
        assert sample(metrics, "smtp_relay_delivery_latency_seconds_count") == 1
        assert sample(metrics, "smtp_relay_delivery_latency_seconds_sum") == pytest.approx(660, abs=1)


@pytest.mark.looptime(start=START)
async def test_permanent_failures_bounce_once_per_attempt(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if message.envelope.is_bounce:
            return deliver_all(message, rcpts, n)
        return {
            r: Outcome.delivered() if r.startswith("ok") else Outcome.permanent(550, "5.1.1 no such user", "mx:25")
            for r in rcpts
        }

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec()) as (spool, sched, metrics):
        message = await submit(spool, sched, "ok@example.net", "x@example.net", "y@example.net")
        await until(lambda: len(delivery.bounces()) == 1 and spool.depth() == 0, delivery)
        (bounce,) = delivery.bounces()
        assert bounce.message.envelope.mail_from == ""
        assert bounce.message.envelope.rcpt_tos == ("alice@example.org",)
        assert bounce.recipients == ["alice@example.org"]
        assert dsn_statuses(bounce.data) == {"x@example.net": "5.1.1", "y@example.net": "5.1.1"}
        assert f"X-Relayfleet-Queue-ID: {message.id}".encode() in bounce.data
        assert b"Subject: report" in bounce.data and b"secret body" not in bounce.data
        assert len(delivery.of(message)) == 1
        assert sample(metrics, "smtp_relay_bounced_recipients_total", reason="permanent") == 2


@pytest.mark.looptime(start=START)
async def test_expiry_bounces_with_4_4_7_at_max_age(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if message.envelope.is_bounce:
            return deliver_all(message, rcpts, n)
        return {r: Outcome.temporary(421, "4.4.2 connection dropped", "mx:25") for r in rcpts}

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["10m"], max_age="25m")) as (spool, sched, metrics):
        message = await submit(spool, sched, "bob@example.net")
        await until(lambda: len(delivery.bounces()) == 1, delivery)
        # The last retry is pulled in to maxAge so the sender hears about it on time.
        assert [c.at - START for c in delivery.of(message)] == pytest.approx([0, 600, 1200, 1500], abs=1)
        (bounce,) = delivery.bounces()
        assert dsn_statuses(bounce.data) == {"bob@example.net": "4.4.7"}
        assert b"Diagnostic-Code: smtp; 421 4.4.2 connection dropped" in bounce.data
        assert spool.depth() == 0
        assert sample(metrics, "smtp_relay_bounced_recipients_total", reason="expired") == 1


@pytest.mark.looptime(start=START)
@pytest.mark.parametrize("is_bounce", [False, True])
async def test_null_sender_and_bounces_are_never_bounced(tmp_path: Path, is_bounce: bool) -> None:
    delivery = FakeDelivery(lambda m, rcpts, n: {r: Outcome.permanent(550, "5.1.1 unknown") for r in rcpts})
    async with relay(tmp_path, delivery, RetrySpec()) as (spool, sched, metrics):
        sender = "" if not is_bounce else "mailer-daemon@relay.test"
        await submit(spool, sched, "bob@example.net", sender=sender, is_bounce=is_bounce)
        await until(lambda: spool.depth() == 0, delivery)
        await asyncio.sleep(120)
        assert len(delivery.calls) == 1
        assert delivery.bounces() == ([] if not is_bounce else delivery.calls)
        assert sample(metrics, "smtp_relay_bounced_recipients_total", reason="permanent") == 1


@pytest.mark.looptime(start=START)
async def test_settled_recipients_are_never_resent_even_after_a_restart(tmp_path: Path) -> None:
    plan = {"a@x.net": 0, "b@x.net": 1, "c@x.net": 2}  # delivered on the n-th attempt

    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        return {r: Outcome.delivered() if n >= plan[r] else Outcome.temporary(450, "greylisted") for r in rcpts}

    first = FakeDelivery(script)
    async with relay(tmp_path, first, RetrySpec(schedule=["1m"])) as (spool, sched, _):
        message = await submit(spool, sched, "a@x.net", "b@x.net", "c@x.net")
        await until(lambda: len(first.calls) == 1, first)
    assert first.calls[0].recipients == ["a@x.net", "b@x.net", "c@x.net"]

    # A new process: the journal says a@ is done and when the next attempt is due.
    second = FakeDelivery(lambda m, rcpts, n: script(m, rcpts, n + 1))
    async with relay(tmp_path, second, RetrySpec(schedule=["1m"])) as (spool, _, _):
        await until(lambda: spool.depth() == 0, second)
        assert [c.recipients for c in second.calls] == [["b@x.net", "c@x.net"], ["c@x.net"]]
        assert second.calls[0].message.id == message.id
        assert second.calls[0].at - START >= 60 - 1


@pytest.mark.looptime(start=START)
async def test_a_raising_delivery_is_a_temporary_failure(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if n == 0 and rcpts == ["bob@example.net"]:
            raise ConnectionResetError("upstream went away")
        return deliver_all(message, rcpts, n)

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["2m"])) as (spool, sched, _):
        message = await submit(spool, sched, "bob@example.net")
        await until(lambda: len(delivery.calls) == 1, delivery)
        await asyncio.sleep(1)
        assert message.state is QueueState.DEFERRED
        assert "ConnectionResetError" in message.last_error
        other = await submit(spool, sched, "carol@example.net")  # the loop is alive
        await until(lambda: spool.depth() == 0, delivery)
        assert [c.at - START for c in delivery.of(message)] == pytest.approx([0, 120], abs=1)
        assert len(delivery.of(other)) == 1


@pytest.mark.looptime(start=START)
async def test_active_window_is_bounded(tmp_path: Path) -> None:
    delivery = FakeDelivery(deliver_all, delay=5.0)
    async with relay(tmp_path, delivery, RetrySpec(), max_active=3) as (spool, sched, _):
        for i in range(10):
            await submit(spool, sched, f"r{i}@x.net")
        await asyncio.sleep(1)
        assert sched.stats().active == 10
        await until(lambda: spool.depth() == 0, delivery)
        assert delivery.max_in_flight == 3
        assert len(delivery.calls) == 10


@pytest.mark.looptime(start=START)
async def test_stats_and_gauges(tmp_path: Path) -> None:
    delivery = FakeDelivery(lambda m, rcpts, n: {r: Outcome.temporary(451, "later") for r in rcpts})
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1h"])) as (spool, sched, metrics):
        await submit(spool, sched, "a@x.net")
        await until(lambda: len(delivery.calls) == 1, delivery)
        await asyncio.sleep(100)
        stats = sched.stats()
        assert (stats.active, stats.deferred, stats.total) == (0, 1, 1)
        assert stats.oldest_deferred_age == pytest.approx(100, abs=1)
        assert sample(metrics, "smtp_relay_queue_messages", state="deferred") == 1
        assert sample(metrics, "smtp_relay_queue_oldest_age_seconds", state="deferred") == pytest.approx(100, abs=1)


@pytest.mark.looptime(start=START)
async def test_drain_retries_deferred_once_and_returns_what_is_left(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if "stuck" in rcpts[0]:
            return {r: Outcome.temporary(451, "still down") for r in rcpts}
        return {r: Outcome.delivered() if n >= 1 else Outcome.temporary(451, "once") for r in rcpts}

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1h"]), run=False) as (spool, sched, _):
        stuck = await submit(spool, sched, "stuck@x.net")
        recovers = await submit(spool, sched, "ok@x.net")
        assert await sched.drain(30) == 2  # first attempts fail; next ones are an hour away
        assert len(delivery.calls) == 2
        started = asyncio.get_running_loop().time()
        assert await sched.drain(30) == 1  # deferred ones are retried at once when draining
        assert asyncio.get_running_loop().time() - started < 5  # nothing could progress: no idle wait
        assert [len(delivery.of(m)) for m in (stuck, recovers)] == [2, 2]
        assert spool.depth() == 1


@pytest.mark.looptime(start=START)
async def test_drain_times_out_with_slow_deliveries_and_stop_keeps_them_spooled(tmp_path: Path) -> None:
    delivery = FakeDelivery(deliver_all, delay=600.0)
    async with relay(tmp_path, delivery, RetrySpec()) as (spool, sched, _):
        await submit(spool, sched, "slow@x.net")
        assert await sched.drain(10) == 1
        await sched.stop()
        assert spool.depth() == 1
    again = FakeDelivery(deliver_all)
    async with relay(tmp_path, again, RetrySpec()) as (spool, sched, _):
        assert await sched.drain(10) == 0
        assert [c.recipients for c in again.calls] == [["slow@x.net"]]


def test_delivered_log_line_names_recipients_remote_and_reply() -> None:
    """What an SRE greps for, as in Postfix's to=, relay= and the reply: per remote, at most 5 names."""
    outcomes = {f"r{i}@x.test": Outcome.delivered("mx1:25", "250 2.0.0 queued as A") for i in range(7)}
    outcomes["other@y.test"] = Outcome.delivered("mx2:25", "250 ok")
    summary = _delivery_summary(list(outcomes), outcomes)
    assert summary == (
        "to=<r0@x.test>,<r1@x.test>,<r2@x.test>,<r3@x.test>,<r4@x.test> (+2 more) via mx1:25: "
        "250 2.0.0 queued as A; to=<other@y.test> via mx2:25: 250 ok"
    )
