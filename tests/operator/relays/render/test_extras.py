"""PodDisruptionBudget, ServiceMonitor and NetworkPolicy."""

from __future__ import annotations

from relay_operator.relays.render.extras import build_networkpolicy, build_pdb, build_servicemonitor
from relay_operator.relays.render.services import build_headless_service, build_service
from tests.operator.relays.render.specs import FULL, OWNER


def test_pdb_allows_one_pod_down() -> None:
    pdb = build_pdb(OWNER)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "outbound"


def test_servicemonitor_scrapes_the_headless_service() -> None:
    monitor = build_servicemonitor(OWNER)
    headless = build_headless_service(OWNER, FULL)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= build_service(OWNER, FULL)["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s"}]


def test_networkpolicy_admits_listener_ports() -> None:
    policy = build_networkpolicy(OWNER, FULL)
    smtp, admin = policy["spec"]["ingress"]
    assert [p["port"] for p in smtp["ports"]] == [2525, 587]
    assert "from" not in smtp
    assert admin["ports"] == [{"port": 9025, "protocol": "TCP"}]
