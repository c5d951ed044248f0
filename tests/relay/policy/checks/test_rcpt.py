"""Checks at RCPT through the engine: recipient syntax and recipient domains (real nsd), and their cache."""

from __future__ import annotations

from typing import Any

import pytest

from tests.peers.dns import DnsServer
from tests.relay.policy.transactions import EngineFactory, facts

pytestmark = pytest.mark.peers


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        ("bob@mail.test", None),
        ("bob@aonly.mail.test", None),
        (
            "bob@nowhere.mail.test",
            "550 5.1.2 Recipient address rejected: domain nowhere.mail.test does not accept mail "
            "(no MX or address record)",
        ),
        (
            "bob@nullmx.mail.test",
            "550 5.1.2 Recipient address rejected: domain nullmx.mail.test does not accept mail "
            "(no MX or address record)",
        ),
        ("bob..x@mail.test", "501 5.1.3 Bad recipient address syntax: invalid local part"),
    ],
)
async def test_recipients_at_rcpt(make_engine: EngineFactory, rcpt: str, reply: str | None) -> None:
    engine = make_engine()
    verdict = await engine.on_rcpt(facts(mail_from="a@pass.spf.test", rcpt=rcpt))
    assert verdict.reply == (reply or "250 2.0.0 Ok")


@pytest.mark.parametrize("route", [{"capture": {}}, {"smarthosts": [{"host": "127.0.0.1"}]}])
async def test_recipient_domains_are_left_to_the_next_hop_off_mx_routes(
    make_engine: EngineFactory, route: dict[str, Any]
) -> None:
    """A smarthost may know domains public DNS does not; captured mail goes nowhere: no 550 5.1.2 there."""
    engine = make_engine(spec={"routing": {"default": route}})
    assert (await engine.on_rcpt(facts(rcpt="bob@nowhere.mail.test"))).code == 250
    assert (await engine.on_rcpt(facts(rcpt="bob..x@mail.test"))).code == 501  # syntax is still ours


async def test_recipient_domains_are_cached(make_engine: EngineFactory, dns_server: DnsServer) -> None:
    engine = make_engine()
    assert (await engine.on_rcpt(facts(rcpt="bob@nowhere.mail.test"))).code == 550
    assert (await engine.on_rcpt(facts(rcpt="bob@mail.test"))).code == 250
    dns_server.stop()  # both answers are remembered for a while
    assert (await engine.on_rcpt(facts(rcpt="carol@nowhere.mail.test"))).code == 550
    assert (await engine.on_rcpt(facts(rcpt="carol@mail.test"))).code == 250
