"""The scheduler on a real spool, in virtual time: retries, partial success, restarts, the active
window, queue statistics and drain."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Outcome, QueueState, StoredMessage
from smtp_relay.queue.scheduler import _delivery_summary
from tests.relay.queue.conftest import START, FakeDelivery, deliver_all, relay, sample, submit, until


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
        assert await sched.drain(30) == 1  # deferred ones are retried at once when draining
        # Nothing could progress after the last attempt (the next one is an hour away): drain returned
        # at that very instant of virtual time instead of idling through its budget.
        assert asyncio.get_running_loop().time() == delivery.calls[-1].at
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
