"""SHAPED outcomes in the scheduler, in virtual time: re-queued for not_before, no attempt counted, no retry
schedule consumed, no delivery slot held while waiting, and still bounced at maxAge."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from smtp_relay.config.shaping_spec import ShapingSpec
from smtp_relay.config.spec import RetrySpec
from smtp_relay.delivery.gate import ShapingGate
from smtp_relay.delivery.shaper import Limits
from smtp_relay.model.envelope import Outcome, QueueState, StoredMessage
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.relay.queue.conftest import START, Call, FakeDelivery, deliver_all, relay, sample, submit, until


def _now() -> float:
    return asyncio.get_running_loop().time()


@pytest.mark.looptime(start=START)
async def test_shaped_comes_back_at_not_before_without_an_attempt(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if n < 3:  # held three times, 7 s each, then a temporary failure, then delivered
            return {r: Outcome.shaped(_now() + 7, "4.7.0 held by traffic shaping (rate)", "routes[0]") for r in rcpts}
        if n == 3:
            return {r: Outcome.temporary(451, "4.3.0 busy") for r in rcpts}
        return deliver_all(message, rcpts, n)

    delivery = FakeDelivery(script)
    retry = RetrySpec(schedule=["1m", "5m"], max_age="1d")
    async with relay(tmp_path, delivery, retry) as (spool, sched, metrics):
        message = await submit(spool, sched, "bob@example.net")
        await until(lambda: len(delivery.calls) == 3, delivery)
        assert message.attempts == 0 and message.state is QueueState.DEFERRED
        assert message.last_error == ""  # held is not an error
        await until(lambda: spool.depth() == 0, delivery)
        times = [c.at - START for c in delivery.of(message)]
        # the first failure waits the schedule's first step (1m), not its third: holding consumed nothing
        assert times == pytest.approx([0, 7, 14, 21, 81], abs=0.5)
        assert message.attempts == 2
        assert sample(metrics, "smtp_relay_deferred_recipients_total") == 1  # only the real failure


@pytest.mark.looptime(start=START)
async def test_partly_shaped_message_delivers_the_rest_and_keeps_the_held_one(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        out = {r: Outcome.delivered("a.test:25") for r in rcpts if r.endswith("@a.test")}
        held = Outcome.shaped(_now() + 30, "4.7.0 held by traffic shaping (backoff)", "routes[1]")
        out.update({r: held if n == 0 else Outcome.delivered("b.test:25") for r in rcpts if r.endswith("@b.test")})
        return out

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["10m"])) as (spool, sched, _):
        message = await submit(spool, sched, "x@a.test", "y@b.test")
        await until(lambda: spool.depth() == 0, delivery)
        calls = delivery.of(message)
        assert [c.recipients for c in calls] == [["x@a.test", "y@b.test"], ["y@b.test"]]
        assert calls[1].at - START == pytest.approx(30, abs=0.5)


@pytest.mark.looptime(start=START)
async def test_mixed_temporary_and_shaped_retries_at_the_earlier_time(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if n == 0:
            return {
                "t@a.test": Outcome.temporary(450, "4.2.0 later"),
                "s@b.test": Outcome.shaped(_now() + 20, "4.7.0 held by traffic shaping (connections)"),
            }
        return deliver_all(message, rcpts, n)

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["10m"])) as (spool, sched, _):
        message = await submit(spool, sched, "t@a.test", "s@b.test")
        await until(lambda: spool.depth() == 0, delivery)
        assert [c.at - START for c in delivery.of(message)] == pytest.approx([0, 20], abs=0.5)
        assert message.attempts == 2  # the temporary failure was an attempt


@pytest.mark.looptime(start=START)
async def test_a_held_destination_does_not_hold_delivery_slots(tmp_path: Path) -> None:
    """With one slot, mail for a held destination goes back to the queue at once: the other goes out now."""

    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if rcpts[0].endswith("@slow.test") and n < 2:
            return {r: Outcome.shaped(_now() + 600, "4.7.0 held by traffic shaping (rate)") for r in rcpts}
        return deliver_all(message, rcpts, n)

    delivery = FakeDelivery(script, delay=1.0)
    async with relay(tmp_path, delivery, RetrySpec(), max_active=1) as (spool, sched, _):
        held = [await submit(spool, sched, f"u{i}@slow.test") for i in range(5)]
        other = await submit(spool, sched, "v@fast.test")
        await until(lambda: len(delivery.of(other)) == 1, delivery)
        assert delivery.of(other)[0].at - START <= 6  # after five 1 s holds, not after 600 s
        await until(lambda: spool.depth() == 0, delivery)
        assert all(len(delivery.of(m)) == 3 for m in held)


@pytest.mark.looptime(start=START)
async def test_held_past_max_age_bounces(tmp_path: Path) -> None:
    def script(message: StoredMessage, rcpts: list[str], n: int) -> Mapping[str, Outcome]:
        if message.envelope.is_bounce:
            return deliver_all(message, rcpts, n)
        return {r: Outcome.shaped(_now() + 3000, "4.7.0 held by traffic shaping (backoff)", "routes[0]") for r in rcpts}

    delivery = FakeDelivery(script)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1m"], max_age="1h")) as (spool, sched, metrics):
        message = await submit(spool, sched, "bob@example.net")
        await until(lambda: spool.depth() == 0, delivery)
        times = [c.at - START for c in delivery.of(message)]
        assert times == pytest.approx([0, 3000, 3600], abs=1)  # capped at maxAge, then bounced
        [bounce] = delivery.bounces()
        assert bounce.message.envelope.rcpt_tos == ("alice@example.org",)
        assert sample(metrics, "smtp_relay_bounced_recipients_total", reason="expired") == 1


@pytest.mark.looptime(start=START)
async def test_a_backlog_behind_a_paced_destination_with_the_real_gate(tmp_path: Path) -> None:
    """The scheduler and the real ShapingGate together, in virtual time: 300 messages for a destination paced
    at 60 a minute go out one a second, each coming back about once (not polling), while mail for another
    destination submitted in the middle goes out at once."""
    loop = asyncio.get_running_loop()
    gate = ShapingGate(RelayMetrics(), clock=loop.time)
    slow = Limits.from_spec(ShapingSpec(messages_per_minute=60))
    sent: dict[str, float] = {}

    async def transaction(rcpts: list[str]) -> dict[str, Outcome]:
        await asyncio.sleep(0.2)
        for rcpt in rcpts:
            sent[rcpt] = loop.time()
        return {r: Outcome.delivered("sink:25") for r in rcpts}

    class GatedDelivery(FakeDelivery):
        """Mail for slow.test goes through the gate, the rest straight out; every call is recorded."""

        async def __call__(self, message: StoredMessage, data: bytes, rcpts: list[str]) -> Mapping[str, Outcome]:
            self.calls.append(Call(loop.time(), message, data, list(rcpts)))
            try:
                if rcpts[0].endswith("@slow.test"):
                    return await gate.run("slow", slow, rcpts, lambda: transaction(rcpts))
                return await transaction(rcpts)
            finally:
                self.event.set()

    delivery = GatedDelivery(deliver_all)
    async with relay(tmp_path, delivery, RetrySpec(schedule=["1h"])) as (spool, sched, _):
        backlog = [await submit(spool, sched, f"u{i}@slow.test") for i in range(300)]
        await until(lambda: len(sent) >= 100, delivery)
        other = await submit(spool, sched, "v@fast.test")
        submitted = loop.time()
        await until(lambda: "v@fast.test" in sent, delivery)
        assert sent["v@fast.test"] - submitted <= 1.0
        await until(lambda: spool.depth() == 0, delivery)
    times = sorted(t for r, t in sent.items() if r.endswith("@slow.test"))
    assert len(times) == 300
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0 - 1e-6  # 60 a minute, paced
    assert times[-1] - times[0] <= 299 * 1.0 + 5  # and the destination was kept busy
    calls = len(delivery.calls) - 1  # the fast one
    assert calls <= 2 * 300, calls  # each held message comes back once, at its place: no polling
    assert all(m.attempts == 1 for m in backlog) and len(delivery.of(other)) == 1
