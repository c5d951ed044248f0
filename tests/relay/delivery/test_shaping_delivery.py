"""Shaping inside the Deliverer against real peers: MX sites (real NSD), connection reuse limits (smtp-sink),
and the gate's metrics with bounded labels."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from bench.peers.smtp_sink import SmtpSink

from smtp_relay.config.shaping_spec import ShapingSpec
from smtp_relay.delivery import gate as gate_module
from smtp_relay.delivery.gate import ShapingGate, site_of
from smtp_relay.delivery.shaper import Limits
from smtp_relay.model.envelope import Outcome, OutcomeKind
from smtp_relay.telemetry.metrics import RelayMetrics, counter_total
from tests.harness.metrics import sample
from tests.peers.dns import DnsServer, ZoneSpec
from tests.peers.smtp_sink import SinkFactory
from tests.relay.delivery.conftest import body, deliverer, message, smarthost


async def test_mx_domains_on_one_site_share_its_limits(
    smtp_sink_factory: SinkFactory, dns_server_factory: Callable[[ZoneSpec], DnsServer], tmp_path: Path
) -> None:
    sink = smtp_sink_factory(delays={".": 1})
    zones: ZoneSpec = {  # two domains on one provider's MX hosts (one site), a third on its own
        "one.test": ["@ MX 10 mx-a.provider.test.", "@ MX 20 mx-b.provider.test."],
        "two.test": ["@ MX 5 MX-B.provider.test.", "@ MX 10 mx-a.provider.test."],
        "own.test": ["@ MX 10 mx", "mx A 127.0.0.1"],
        "provider.test": ["mx-a A 127.0.0.1", "mx-b A 127.0.0.1"],
    }
    dns_server = dns_server_factory(zones)
    routing = {"default": {"mx": {"port": sink.port}}, "shaping": {"maxConnections": 1}}
    d = deliverer(routing, tmp_path, nameservers=[dns_server.nameserver()])
    try:
        first, second, third = await asyncio.gather(
            d.deliver(message("s@sender.test", "a@one.test", queue_id="Q1"), body(), ["a@one.test"]),
            d.deliver(message("s@sender.test", "b@two.test", queue_id="Q2"), body(), ["b@two.test"]),
            d.deliver(message("s@sender.test", "c@own.test", queue_id="Q3"), body(), ["c@own.test"]),
        )
    finally:
        await d.close()
    site = "default/mx-a.provider.test,mx-b.provider.test"
    kinds = sorted([first["a@one.test"].kind.value, second["b@two.test"].kind.value])
    assert kinds == ["delivered", "shaped"]  # one connection to the provider's site, whichever domain
    held = first["a@one.test"] if first["a@one.test"].kind is OutcomeKind.SHAPED else second["b@two.test"]
    assert held.remote == site and held.not_before > 0
    assert third["c@own.test"].kind is OutcomeKind.DELIVERED  # another site is not held by it
    assert sink.count() == 2


def test_site_of_ignores_order_case_and_the_root_dot() -> None:
    assert site_of(["MX-B.provider.test.", "mx-a.provider.test"]) == "mx-a.provider.test,mx-b.provider.test"
    assert len(site_of([f"mx{i}.very-long-provider-name.test" for i in range(20)])) == gate_module.MAX_SITE_LENGTH


async def test_max_messages_per_connection_closes_the_pooled_session(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    routing = {
        "default": {"capture": {}},
        "routes": [
            {
                "match": {"recipientDomains": ["example.test"]},
                "smarthosts": [smarthost(smtp_sink.port)],
                "shaping": {"maxMessagesPerConnection": 2},
            }
        ],
    }
    d = deliverer(routing, tmp_path)
    sessions_before = smtp_sink.sessions()  # the readiness probe
    try:
        for i in range(5):
            outcomes = await d.deliver(
                message("s@sender.test", "b@example.test", queue_id=f"Q{i}"), body(), ["b@example.test"]
            )
            assert outcomes["b@example.test"].kind is OutcomeKind.DELIVERED
    finally:
        await d.close()
    await smtp_sink.async_wait_for(5)
    await asyncio.sleep(0.1)  # smtp-sink writes a session's counters when it ends
    assert smtp_sink.sessions() - sessions_before == 3  # 2 + 2 + 1


def _limits(**fields: object) -> Limits:
    return Limits.from_spec(ShapingSpec.model_validate(fields))


async def test_gate_metrics_list_reduced_destinations_only_and_boundedly(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = RelayMetrics()
    gate = ShapingGate(metrics)
    monkeypatch.setattr(gate_module, "MAX_LABELS", 2)
    lim = _limits(maxConnections=4, adaptive={"initialBackoff": "1ms", "maxBackoff": "1ms"})

    async def throttled() -> dict[str, Outcome]:
        return {"r@x.test": Outcome.temporary(421, "4.7.0 too fast")}

    async def delivered() -> dict[str, Outcome]:
        return {"r@x.test": Outcome.delivered("mx:25")}

    for key in ("d1", "d2", "d3"):
        await gate.run(key, lim, ["r@x.test"], throttled)
    registry = metrics.registry
    assert sample(registry, "smtp_relay_shaping_window", destination="d1") == 1.0
    assert sample(registry, "smtp_relay_shaping_window", destination="d2") == 1.0
    listed = {s.labels["destination"] for m in metrics.shaping_window.collect() for s in m.samples}
    assert listed == {"d1", "d2"}  # bounded: d3 is counted, not listed
    assert sample(registry, "smtp_relay_shaping_reduced_destinations") == 3
    assert counter_total(metrics.shaping_backoffs) == 3
    await asyncio.sleep(0.01)  # the 1 ms pause is over
    for _ in range(20):  # slow start: 1, 2 (half of 4), then +1/window
        await gate.run("d1", lim, ["r@x.test"], delivered)
        if gate.shaper.window("d1") == 4.0:
            break
    listed = {s.labels["destination"] for m in metrics.shaping_window.collect() for s in m.samples}
    assert listed == {"d2"}  # recovered: its series is gone
    assert sample(registry, "smtp_relay_shaping_reduced_destinations") == 2
