"""The client Service and the headless one."""

from __future__ import annotations

import pytest

from relay_operator.relays.render.common import Owner
from relay_operator.relays.render.services import (
    EXTERNAL_TRAFFIC_POLICY,
    SERVICE_TYPE,
    ServiceOptionError,
    build_headless_service,
    build_service,
)
from relay_operator.relays.render.statefulset import build_statefulset
from tests.operator.relays.render.specs import FULL, OWNER, SETTINGS


def test_service_has_one_port_per_listener() -> None:
    svc = build_service(OWNER, FULL)
    assert svc["metadata"]["name"] == "outbound"
    assert svc["spec"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in svc["spec"]
    assert svc["spec"]["ports"] == [
        {"name": "relay", "port": 2525, "targetPort": "relay", "protocol": "TCP"},
        {"name": "submission", "port": 587, "targetPort": "submission", "protocol": "TCP"},
    ]
    assert svc["spec"]["selector"] == build_statefulset(OWNER, FULL, SETTINGS)["spec"]["selector"]["matchLabels"]


def test_load_balancer_keeps_client_ips_unless_told_otherwise() -> None:
    lb = Owner(name="o", namespace="n", uid="u", annotations={SERVICE_TYPE: "LoadBalancer"})
    assert build_service(lb, FULL)["spec"]["externalTrafficPolicy"] == "Local"
    cluster = Owner(
        name="o", namespace="n", uid="u", annotations={SERVICE_TYPE: "NodePort", EXTERNAL_TRAFFIC_POLICY: "Cluster"}
    )
    assert build_service(cluster, FULL)["spec"]["externalTrafficPolicy"] == "Cluster"
    bad = Owner(name="o", namespace="n", uid="u", annotations={SERVICE_TYPE: "ExternalName"})
    with pytest.raises(ServiceOptionError, match=r"relayfleet\.io/service-type: 'ExternalName'"):
        build_service(bad, FULL)


def test_headless_service_exposes_pods_and_admin_port() -> None:
    svc = build_headless_service(OWNER, FULL)
    assert svc["metadata"]["name"] == "outbound-pods"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert [p["name"] for p in svc["spec"]["ports"]] == ["relay", "submission", "admin"]
