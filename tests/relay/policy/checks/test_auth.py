"""The AUTH failure throttle through the engine, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from smtp_relay.policy.verdict import Action
from tests.relay.policy.transactions import EngineFactory, facts

pytestmark = pytest.mark.peers


@pytest.mark.looptime
async def test_auth_failures_are_tarpitted_then_refused(make_engine: EngineFactory) -> None:
    loop = asyncio.get_running_loop()
    engine = make_engine(clock=loop.time)
    fx = facts("192.0.2.7")
    started = loop.time()
    replies = []
    for _ in range(10):
        assert not (await engine.reserve_auth(fx)).refuses
        replies.append((await engine.auth_failed(fx, "bob")).code)
    assert replies == [535] * 9 + [454]
    assert loop.time() - started == pytest.approx(0 + 0 + 0 + 1 + 2 + 3 + 4 + 5 + 5 + 5)
    assert (await engine.before_auth(fx)).reply == "454 4.7.0 Too many authentication failures, try again later"
    assert (await engine.reserve_auth(fx)).reply == "454 4.7.0 Too many authentication failures, try again later"
    assert (await engine.before_auth(facts("192.0.2.8"))).action is Action.ACCEPT
    await asyncio.sleep(900)
    assert (await engine.before_auth(fx)).action is Action.ACCEPT


async def test_audit_mode_reserves_and_checks_a_throttled_attempt(make_engine: EngineFactory) -> None:
    engine = make_engine({"mode": "audit"}, sleep=_no_sleep)
    fx = facts("192.0.2.9")
    for _ in range(10):
        assert (await engine.reserve_auth(fx)).action is Action.ACCEPT
        assert (await engine.auth_failed(fx, "bob")).code == 535  # audit: the 454 is logged, not given
    assert (await engine.reserve_auth(fx)).action is Action.ACCEPT
    assert engine.auth_throttle._records["192.0.2.9"].pending == 1
    engine.auth_abandoned(fx, "bob")  # settled: the client left mid-check
    assert engine.auth_throttle._records["192.0.2.9"].pending == 0


async def _no_sleep(seconds: float) -> None:
    """The tarpit, skipped: these tests look at verdicts, not at the delay."""
