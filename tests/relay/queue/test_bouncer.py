"""Bounces through the scheduler on a real spool, in virtual time: one DSN per attempt, expiry at
maxAge, and never a bounce for the null sender or for a bounce."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Mapping
from email.message import Message
from pathlib import Path

import pytest

from smtp_relay.config.spec import RetrySpec
from smtp_relay.model.envelope import Outcome, StoredMessage
from tests.relay.queue.conftest import START, FakeDelivery, deliver_all, relay, sample, submit, until


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
