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


def test_connections_per_client_are_limited_and_allowed_networks_have_their_own_limit(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine(
        spec={
            "clients": {
                "allowedNetworks": ["10.0.0.0/8"],
                "maxConnectionsPerClient": 2,
                "maxConnectionsPerTrustedClient": 5,
            }
        }
    )

    def accept(client_ip: str) -> Action:
        """What the listener does at accept: count the socket, then ask."""
        engine.connection_opened(client_ip)
        return engine.on_accept(facts(client_ip)).action

    assert [accept("192.0.2.1") for _ in range(3)] == [Action.ACCEPT, Action.ACCEPT, Action.DEFER]
    assert (
        engine.on_accept(facts("192.0.2.1")).reply == "421 4.7.0 Too many connections from your host, try again later"
    )
    assert engine.connections.open_connections("192.0.2.1") == 3  # a refused socket counts until it is closed
    assert [accept("10.1.2.3") for _ in range(6)] == [Action.ACCEPT] * 5 + [Action.DEFER]
    assert accept("192.0.2.2") is Action.ACCEPT  # only that client
    engine.connection_closed("192.0.2.1")
    engine.connection_closed("192.0.2.1")
    assert engine.on_accept(facts("192.0.2.1")).action is Action.ACCEPT
