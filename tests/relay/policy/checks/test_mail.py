"""Checks at MAIL through the engine: SPF (real nsd) in each mode, and the verified sender domain."""

from __future__ import annotations

import pytest

from smtp_relay.config.domains import SendingDomainConfig, SendingDomains
from smtp_relay.policy.verdict import Action
from tests.relay.policy.transactions import EngineFactory, envelope, facts, message

pytestmark = pytest.mark.peers


@pytest.mark.parametrize(
    ("mode", "sender", "action", "reply"),
    [
        (
            "reject",
            "a@fail.spf.test",
            Action.REJECT,
            "550 5.7.23 SPF fail for fail.spf.test: SPF fail - not authorized",
        ),
        ("tag", "a@fail.spf.test", Action.TAG, None),
        ("reject", "a@softfail.spf.test", Action.TAG, None),
        ("reject", "a@pass.spf.test", Action.ACCEPT, None),
        ("reject", "a@toomany.spf.test", Action.ACCEPT, None),
        ("off", "a@fail.spf.test", Action.ACCEPT, None),
    ],
)
async def test_spf_at_mail(
    make_engine: EngineFactory, mode: str, sender: str, action: Action, reply: str | None
) -> None:
    engine = make_engine({"ipAuthority": {"spf": mode}})
    verdict = await engine.on_mail(facts(mail_from=sender))
    assert verdict.action is action
    if reply is not None:
        assert verdict.reply == reply


async def test_spf_is_not_asked_for_the_platforms_own_networks(make_engine: EngineFactory) -> None:
    """allowedNetworks are the authority for internal apps: their pod IPs are in no domain's SPF."""
    engine = make_engine({"ipAuthority": {"spf": "reject"}}, spec={"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    verdict = await engine.on_mail(facts(mail_from="a@fail.spf.test"))
    assert verdict.action is Action.ACCEPT
    decision = await engine.on_data(facts(mail_from="a@fail.spf.test"), message(), envelope("a@fail.spf.test"))
    assert not any(name == "Authentication-Results" and "spf=" in value for name, value in decision.add_headers)


async def test_require_verified_domain(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "off"}}, spec={"senders": {"requireVerifiedDomain": True}})
    unknown = await engine.on_mail(facts(mail_from="a@pass.spf.test"))
    assert unknown.reply == "451 4.7.0 Sender domain verification status not known yet, try again later"
    engine.sending_domains = SendingDomains(
        {
            "pass.spf.test": SendingDomainConfig("pass.spf.test", verified=True),
            "pending.test": SendingDomainConfig("pending.test", verified=False, missing=("dkim", "spf")),
        }
    )
    assert (await engine.on_mail(facts(mail_from="a@pass.spf.test"))).action is Action.ACCEPT
    assert (await engine.on_mail(facts(mail_from="a@mail.pass.spf.test"))).action is Action.ACCEPT  # a subdomain
    refused = await engine.on_mail(facts(mail_from="a@other.test"))
    assert refused.reply == "550 5.7.1 Sender domain other.test has no SendingDomain for this relay"
    pending = await engine.on_mail(facts(mail_from="a@Pending.test"))
    assert (
        pending.reply
        == "550 5.7.1 Sender domain pending.test is not verified: its DNS records are not in place (dkim, spf)"
    )
    assert (await engine.on_mail(facts(mail_from=""))).action is Action.ACCEPT  # bounces have no domain
