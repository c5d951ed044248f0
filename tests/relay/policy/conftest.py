"""Fixtures of the policy tests: an engine for a spec as the manifest writes it (on the tests' nsd), and
a count of what the MIME parser is given."""

from __future__ import annotations

import email
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from smtp_relay.cleanup.headers import policy_headers
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.quarantine import QuarantineStore
from tests.peers.dns import DnsServer
from tests.relay.policy.transactions import EngineFactory
from tests.relay.policy.zones import DNSBL_ZONE, MAIL_ZONE, SPF_ZONE


@pytest.fixture
def dns_server(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory({**SPF_ZONE, **DNSBL_ZONE, **MAIL_ZONE})  # type: ignore[no-any-return]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_engine(dns_server: DnsServer, registry: CollectorRegistry, tmp_path: Path) -> EngineFactory:
    """An engine for a spec written as the manifest would (camelCase dict), pointed at the test's nsd.

    It composes headers with cleanup's `policy_headers`, as the relay wires it.
    """

    def make(policy: dict[str, Any] | None = None, **kwargs: Any) -> PolicyEngine:
        spec = SmtpRelaySpec.model_validate(
            {
                "policy": policy or {},
                "dns": {"nameservers": [dns_server.nameserver()]},
                "routing": {"default": {"mx": {}}},  # direct delivery: the relay checks recipient domains itself
                **kwargs.pop("spec", {}),
            }
        )
        return PolicyEngine(
            spec,
            make_resolver(spec.dns),
            hostname="relay.test",
            metrics=PolicyMetrics(registry),
            quarantine=QuarantineStore(tmp_path / "quarantine"),
            compose_headers=policy_headers,
            **kwargs,
        )

    return make


@pytest.fixture
def parser_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every input the stdlib MIME parser gets during the test (policy.mime's full parse).

    A bound on the work a pathological message causes that does not depend on the machine's speed.
    """
    sizes: list[int] = []
    parse = email.message_from_bytes

    def counted(data: bytes, *args: Any, **kwargs: Any) -> Message:
        sizes.append(len(data))
        return parse(data, *args, **kwargs)

    monkeypatch.setattr(email, "message_from_bytes", counted)
    return sizes
