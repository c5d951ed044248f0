"""The chain runner: order, first refusal wins, tags, SKIP, accounting and audit mode, async checks.

Async only (a sync test beside async ones leaks an event loop through looptime's hook): the
synchronous runner is called from async tests too.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from smtp_relay.config.spec import Listener
from smtp_relay.policy.chain import Accounting, Chain
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.verdict import ACCEPT, SKIP, Action, Check, Facts, Outcome, Verdict, defer, reject
from tests.harness.metrics import sample

FACTS = Facts(listener=Listener(name="smtp", port=2525), client_ip="192.0.2.1")
TAG = Verdict(Action.TAG, 250, "2.0.0", "Ok", "spam_tag")
REFUSED = reject(554, "5.7.1", "No", "refused")


def accounting(registry: CollectorRegistry, *, audit: bool = False) -> Accounting:
    return Accounting(PolicyMetrics(registry), audit=audit)


async def test_first_refusal_wins_and_a_tag_does_not_end_the_chain() -> None:
    seen: list[str] = []

    def tag(facts: Facts) -> Verdict:
        seen.append("tag")
        return TAG

    def refuse(facts: Facts) -> Verdict:
        seen.append("refuse")
        return defer(451, "4.7.1", "Slow down", "rate")

    def never(facts: Facts) -> Verdict | None:
        seen.append("never")
        return None

    chain = Chain("mail", [lambda f: None, tag, refuse, never], sync=True)
    assert chain.run_sync(FACTS).reply == "451 4.7.1 Slow down"
    assert seen == ["tag", "refuse"]
    tagged = Chain("mail", [tag], sync=True).run_sync(FACTS)
    assert tagged is TAG and not tagged.refuses  # the stage's answer says it was tagged; it is no refusal
    assert Chain("mail", sync=True).run_sync(FACTS) is ACCEPT


async def test_policy_checks_are_counted_and_audited_listener_checks_are_not() -> None:
    registry = CollectorRegistry()
    policy_check = Check("dnsbl", "connect", lambda f: REFUSED)
    listener_check = Check("tls_required", "connect", lambda f: REFUSED, policy=False)
    audited = Chain("connect", [policy_check], accounting(registry, audit=True), sync=True)
    assert audited.run_sync(FACTS) is ACCEPT
    assert sample(registry, "smtp_relay_policy_checks_total", check="dnsbl") == 1
    assert sample(registry, "smtp_relay_policy_verdicts_total", check="dnsbl", action="reject") == 1
    assert sample(registry, "smtp_relay_policy_audit_overrides_total", check="dnsbl", action="reject") == 1
    audited.append(listener_check)
    assert audited.run_sync(FACTS) is REFUSED  # audit mode is the policy's, not the listener's
    assert sample(registry, "smtp_relay_policy_checks_total", check="tls_required") == 0


async def test_enforced_policy_verdicts_are_counted_and_returned() -> None:
    registry = CollectorRegistry()
    checks = [Check("rcpt_syntax", "rcpt", lambda f: None), Check("x", "rcpt", lambda f: REFUSED)]
    chain = Chain("rcpt", checks, accounting(registry))
    assert await chain.run(FACTS) is REFUSED
    assert sample(registry, "smtp_relay_policy_checks_total", check="rcpt_syntax") == 1
    assert sample(registry, "smtp_relay_policy_verdicts_total", check="x", action="reject") == 1


async def test_a_check_that_does_not_apply_is_not_counted() -> None:
    registry = CollectorRegistry()
    chain = Chain("connect", [Check("connection_limit", "connect", lambda f: SKIP)], accounting(registry), sync=True)
    assert chain.run_sync(FACTS) is ACCEPT
    assert sample(registry, "smtp_relay_policy_checks_total", check="connection_limit") == 0


async def test_an_async_check_is_awaited_only_when_it_returns_an_awaitable() -> None:
    answers: list[Verdict | None] = [None, REFUSED]

    async def look_up() -> Verdict | None:
        return answers.pop()

    cached: dict[str, Verdict | None] = {}

    def check_lookup(facts: Facts) -> Outcome:
        if facts.client_ip in cached:
            return cached[facts.client_ip]
        return look_up()

    registry = CollectorRegistry()
    chain = Chain("mail", [Check("lookup", "mail", check_lookup, waits=True)], accounting(registry))
    assert await chain.run(FACTS) is REFUSED
    cached[FACTS.client_ip] = None
    assert await chain.run(FACTS) is ACCEPT
    assert answers == [None]  # the cached answer needed no lookup
    assert sample(registry, "smtp_relay_policy_checks_total", check="lookup") == 2


async def test_chains_refuse_checks_they_cannot_run() -> None:
    waiting = Check("spf", "mail", lambda f: None, waits=True)
    with pytest.raises(ValueError, match="waits"):
        Chain("mail", [waiting], accounting(CollectorRegistry()), sync=True)
    with pytest.raises(ValueError, match="accounting"):
        Chain("mail", [Check("spf", "mail", lambda f: None)])
    with pytest.raises(ValueError, match="stage"):
        Chain("rcpt", [Check("spf", "mail", lambda f: None, policy=False)])
    with pytest.raises(TypeError, match="run"):
        Chain("mail", [waiting], accounting(CollectorRegistry())).run_sync(FACTS)
