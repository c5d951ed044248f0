"""Checks at connect through the engine: DNSBL (real nsd) and the per-client connection limit."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from smtp_relay.policy.verdict import Action
from tests.harness.metrics import sample
from tests.relay.policy.transactions import EngineFactory, facts

pytestmark = pytest.mark.peers


async def test_a_listed_client_is_refused_at_connect(make_engine: EngineFactory, registry: CollectorRegistry) -> None:
    engine = make_engine({"ipAuthority": {"dnsbl": {"zones": ["bl.test"], "action": "reject"}}})
    verdict = await engine.on_connect(facts("127.0.0.2"))
    assert verdict.reply == (
        "554 5.7.1 Client host rejected: listed in bl.test: 127.0.0.2 is listed, see https://bl.test/lookup?127.0.0.2"
    )
    assert (await engine.on_connect(facts("127.0.0.1"))).action is Action.ACCEPT
    assert sample(registry, "smtp_relay_policy_checks_total", check="dnsbl") == 2
    assert sample(registry, "smtp_relay_policy_verdicts_total", check="dnsbl", action="reject") == 1


async def test_connections_per_client_are_limited_except_for_allowed_networks(make_engine: EngineFactory) -> None:
    engine = make_engine(spec={"clients": {"allowedNetworks": ["10.0.0.0/8"]}}, max_connections_per_client=2)
    for _ in range(2):
        assert (await engine.on_connect(facts("192.0.2.1"))).action is Action.ACCEPT
    refused = await engine.on_connect(facts("192.0.2.1"))
    assert refused.reply == "421 4.7.0 Too many connections from your host, try again later"
    for _ in range(5):
        assert (await engine.on_connect(facts("10.1.2.3"))).action is Action.ACCEPT
    engine.on_disconnect(facts("192.0.2.1"))
    assert (await engine.on_connect(facts("192.0.2.1"))).action is Action.ACCEPT
