"""The engine across stages: rate limits from MAIL to end of DATA in virtual time, audit mode, reload.

The checks of each stage are tested in checks/ and test_data_stage.py; the fixtures are in conftest.py.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.policy.verdict import Action
from tests.harness.metrics import sample
from tests.relay.policy.transactions import GTUBE, EngineFactory, envelope, facts, message

pytestmark = pytest.mark.peers


@pytest.mark.looptime
async def test_rate_limit_counts_accepted_messages_and_slides(make_engine: EngineFactory) -> None:
    loop = asyncio.get_running_loop()
    engine = make_engine(
        {"ipAuthority": {"spf": "off"}, "rateLimits": [{"key": "sender", "limit": 2, "per": "1m"}]}, clock=loop.time
    )
    fx = facts(mail_from="alice@pass.spf.test")
    for _ in range(2):
        assert (await engine.on_mail(fx)).action is Action.ACCEPT
        assert (await engine.on_data(fx, message(), envelope())).verdict.code == 250
    assert (await engine.on_mail(fx)).reply.startswith("451 4.7.1 Rate limit exceeded for sender")
    assert (await engine.on_data(fx, message(), envelope())).verdict.code == 451  # parallel sessions cannot slip by
    assert (await engine.on_mail(facts(mail_from="carol@pass.spf.test"))).action is Action.ACCEPT
    await asyncio.sleep(120)
    assert (await engine.on_mail(fx)).action is Action.ACCEPT


async def test_audit_mode_accepts_everything_but_counts_it(
    make_engine: EngineFactory, registry: CollectorRegistry
) -> None:
    engine = make_engine(
        {
            "mode": "audit",
            "ipAuthority": {"spf": "reject", "dnsbl": {"zones": ["bl.test"], "action": "reject"}},
            "attachments": {"action": "quarantine"},
            "rateLimits": [{"key": "client", "limit": 1}],
        }
    )
    fx = facts("127.0.0.2", mail_from="alice@fail.spf.test", rcpt="bob@nowhere.mail.test")
    assert (await engine.on_connect(fx)).action is Action.ACCEPT
    assert (await engine.on_mail(fx)).action is Action.ACCEPT
    assert (await engine.on_rcpt(fx)).action is Action.ACCEPT
    data = message(GTUBE.decode(), attachment=("x.exe", b"MZ"))
    for _ in range(2):  # the second one is over the rate limit too
        decision = await engine.on_data(fx, data, envelope("alice@fail.spf.test"))
        assert (decision.verdict.action, decision.add_headers, decision.quarantine_reason) == (Action.ACCEPT, [], None)
    audited = {
        (check, action): sample(registry, "smtp_relay_policy_audit_overrides_total", check=check, action=action)
        for check, action in [
            ("dnsbl", "reject"),
            ("spf", "reject"),
            ("rcpt_domain", "reject"),
            ("attachments", "quarantine"),
            ("spam", "reject"),
            ("ratelimit", "defer"),
        ]
    }
    assert audited == {
        ("dnsbl", "reject"): 1,
        ("spf", "reject"): 1,
        ("rcpt_domain", "reject"): 1,
        ("attachments", "quarantine"): 2,
        ("spam", "reject"): 2,
        ("ratelimit", "defer"): 1,
    }


async def test_update_applies_a_new_policy(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "reject"}})
    fx = facts(mail_from="a@fail.spf.test")
    assert (await engine.on_mail(fx)).action is Action.REJECT
    await engine.update(SmtpRelaySpec.model_validate({"policy": {"ipAuthority": {"spf": "off"}}}))
    assert (await engine.on_mail(fx)).action is Action.ACCEPT
    await engine.close()
