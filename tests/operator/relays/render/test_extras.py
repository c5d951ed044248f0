"""PodDisruptionBudget, ServiceMonitor and NetworkPolicy."""

from __future__ import annotations

import pytest

from relay_operator.relays.render.extras import build_networkpolicy, build_pdb, build_servicemonitor
from relay_operator.relays.render.services import build_headless_service, build_service
from relay_operator.settings import Settings
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
    policy = build_networkpolicy(OWNER, FULL, Settings())
    smtp, admin = policy["spec"]["ingress"]
    assert [p["port"] for p in smtp["ports"]] == [2525, 587]
    assert "from" not in smtp
    assert admin["ports"] == [{"port": 9025, "protocol": "TCP"}]


def test_networkpolicy_admits_the_admin_port_only_from_the_operator_its_relays_and_monitoring() -> None:
    """The relay's own pods (this SmtpRelay's, this namespace's) reach it too: a draining pod hands off its queue."""
    settings = Settings(
        operator_namespace="relayfleet",
        operator_pod_labels="app.kubernetes.io/name=relayfleet-operator,app.kubernetes.io/instance=rf",
        monitoring_namespaces="team=observability",
    )
    _, admin = build_networkpolicy(OWNER, FULL, settings)["spec"]["ingress"]
    assert admin["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "relayfleet"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "relayfleet-operator", "app.kubernetes.io/instance": "rf"}
            },
        },
        {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "relayfleet-relay", "app.kubernetes.io/instance": "outbound"}
            }
        },
        {"namespaceSelector": {"matchLabels": {"team": "observability"}}},
    ]
    assert {"podSelector": {}} not in admin["from"], "not every pod of the namespace"


def test_networkpolicy_without_monitoring_labels_admits_no_namespace_wholesale() -> None:
    _, admin = build_networkpolicy(OWNER, FULL, Settings(monitoring_namespaces=""))["spec"]["ingress"]
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in admin["from"])
    assert all(peer.get("namespaceSelector") != {"matchLabels": {}} for peer in admin["from"])


def test_bad_label_settings_are_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="RELAYFLEET_MONITORING_NAMESPACES"):
        Settings.from_env({"RELAYFLEET_MONITORING_NAMESPACES": "monitoring"})
