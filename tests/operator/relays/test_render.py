"""Each builder, from plain spec data to the manifest Kubernetes will get."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from relay_operator.relays.render import (
    Owner,
    build_all,
    build_configmap,
    build_headless_service,
    build_networkpolicy,
    build_pdb,
    build_service,
    build_servicemonitor,
    build_statefulset,
    referenced_secrets,
    restart_checksum,
)
from relay_operator.relays.render.services import EXTERNAL_TRAFFIC_POLICY, SERVICE_TYPE, ServiceOptionError
from relay_operator.settings import Settings
from smtp_relay.config.manifest import load_documents, parse_spec

OWNER = Owner(name="outbound", namespace="mail", uid="uid-1", generation=3)
SETTINGS = Settings()
FULL = parse_spec(
    {
        "replicas": 3,
        "listeners": [
            {"name": "relay", "port": 2525},
            {"name": "submission", "port": 587, "tls": "starttls", "requireTLS": True, "auth": "required"},
        ],
        "tls": {"secretName": "outbound-tls"},
        "clients": {"users": {"secretName": "outbound-users"}},
        "routing": {
            "default": {"smarthosts": [{"host": "up.example", "credentialsSecret": "creds", "caSecret": "up-ca"}]},
            "routes": [
                {"match": {"senderDomains": ["x.example"]}, "smarthosts": [{"host": "b", "credentialsSecret": "creds"}]}
            ],
        },
        "queue": {"storage": "10Gi", "storageClassName": "fast"},
        "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}},
    }
)
MINIMAL = parse_spec({})
LABELS = {
    "app.kubernetes.io/name": "relayfleet-relay",
    "app.kubernetes.io/instance": "outbound",
    "app.kubernetes.io/component": "relay",
    "app.kubernetes.io/managed-by": "relayfleet-operator",
    "app.kubernetes.io/part-of": "relayfleet",
}


def pod(statefulset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = statefulset["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("settings", [Settings(), Settings(service_monitor=True, network_policy=True)])
def test_every_child_is_owned_and_labelled(settings: Settings) -> None:
    children = build_all(OWNER, FULL, settings)
    kinds = [c["kind"] for c in children]
    assert kinds[:5] == ["ConfigMap", "Service", "Service", "StatefulSet", "PodDisruptionBudget"]
    assert len(children) == (7 if settings.service_monitor else 5)
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "mail"
        assert LABELS.items() <= meta["labels"].items()
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "relayfleet.io/v1alpha1",
            "kind": "SmtpRelay",
            "name": "outbound",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_configmap_round_trips_through_the_relays_loader() -> None:
    cm = build_configmap(OWNER, FULL)
    assert cm["metadata"]["name"] == "outbound-config"
    document = yaml.safe_load(cm["data"]["relay.yaml"])
    assert document["kind"] == "SmtpRelay" and document["metadata"] == {"name": "outbound", "namespace": "mail"}
    loaded = load_documents([document])
    assert loaded.spec == FULL
    assert "null" not in cm["data"]["relay.yaml"]


def test_statefulset_runs_the_relay_hardened() -> None:
    sts = build_statefulset(OWNER, FULL, SETTINGS)
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "outbound-pods"
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "relayfleet-relay",
        "app.kubernetes.io/instance": "outbound",
    }
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod(sts)["containers"]
    assert container["command"] == [
        "smtp-relay",
        "run",
        "-f",
        "/etc/relay/relay.yaml",
        "--secrets-dir",
        "/etc/relay/secrets",
        "--spool",
        "/var/spool/relay",
        "--host",
        "0.0.0.0",
        "--http-port",
        "9025",
    ]
    assert container["image"] == SETTINGS.relay_image
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("relay", 2525),
        ("submission", 587),
        ("admin", 9025),
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}}
    assert pod(sts)["terminationGracePeriodSeconds"] == 600


def test_secrets_are_mounted_read_only_once_each() -> None:
    assert referenced_secrets(FULL) == ["outbound-tls", "outbound-users", "creds", "up-ca"]
    sts = build_statefulset(OWNER, FULL, SETTINGS)
    (container,) = pod(sts)["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(sts)["volumes"]}
    for name in referenced_secrets(FULL):
        mount = mounts[f"/etc/relay/secrets/{name}"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == name
    assert mounts["/etc/relay"]["readOnly"] is True
    assert volumes["config"]["configMap"]["name"] == "outbound-config"
    assert "emptyDir" in volumes["tmp"] and mounts["/tmp"]["name"] == "tmp"
    assert len({m["name"] for m in container["volumeMounts"]}) == len(container["volumeMounts"])


def test_spool_is_a_claim_template_with_storage_else_an_empty_dir() -> None:
    with_claim = build_statefulset(OWNER, FULL, SETTINGS)
    (claim,) = with_claim["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert "spool" not in {v["name"] for v in pod(with_claim)["volumes"]}
    without = build_statefulset(OWNER, MINIMAL, SETTINGS)
    assert "volumeClaimTemplates" not in without["spec"]
    assert {"name": "spool", "emptyDir": {}} in pod(without)["volumes"]


def test_restart_checksum_ignores_what_hot_reload_applies() -> None:
    base = restart_checksum(FULL)
    reloadable = FULL.model_copy(
        update={
            "policy": parse_spec({"policy": {"maxRecipients": 5}}).policy,
            "routing": MINIMAL.routing,
            "replicas": 7,
        }
    )
    assert restart_checksum(reloadable) == base
    sts = build_statefulset(OWNER, reloadable, SETTINGS)
    assert sts["spec"]["template"]["metadata"]["annotations"]["relayfleet.io/restart-checksum"] == base
    moved = parse_spec(
        {**FULL.model_dump(by_alias=True, exclude_none=True), "listeners": [{"name": "relay", "port": 2526}]}
    )
    assert restart_checksum(moved) != base
    retls = parse_spec(
        {
            **FULL.model_dump(by_alias=True, exclude_none=True),
            "listeners": [{"name": "relay", "port": 2525, "tls": "implicit"}],
        }
    )
    assert restart_checksum(retls) != base


def test_image_and_grace_period_follow_spec_and_settings() -> None:
    spec = parse_spec({"image": "registry.example/relay:2"})
    sts = build_statefulset(OWNER, spec, Settings(termination_grace_seconds=42))
    assert pod(sts)["containers"][0]["image"] == "registry.example/relay:2"
    assert pod(sts)["terminationGracePeriodSeconds"] == 42


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


def test_long_secret_names_get_valid_volume_names() -> None:
    name = "a" * 60 + ".example"
    spec = parse_spec({"tls": {"secretName": name}, "listeners": [{"name": "s", "port": 465, "tls": "implicit"}]})
    volumes = pod(build_statefulset(OWNER, spec, SETTINGS))["volumes"]
    (secret,) = [v for v in volumes if "secret" in v]
    assert len(secret["name"]) <= 63 and "." not in secret["name"]
    assert secret["secret"]["secretName"] == name
