"""The relay pods: hardened container, mounted Secrets, spool, and what rolls them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay_operator.relays.render.statefulset import (
    RUN_AS,
    build_statefulset,
    referenced_secrets,
    relay_grace_seconds,
    restart_checksum,
)
from relay_operator.settings import Settings
from smtp_relay.config.manifest import parse_spec
from tests.operator.relays.render.specs import FULL, MINIMAL, OWNER, SETTINGS, pod


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
        "--admin-token-file",
        "/etc/relay/admin/token",
        "--grace",
        "570",
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


def test_the_admin_token_secret_is_mounted_where_the_relay_reads_it() -> None:
    sts = build_statefulset(OWNER, FULL, SETTINGS)
    (container,) = pod(sts)["containers"]
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}["/etc/relay/admin"]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in pod(sts)["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "outbound-admin-token"
    token_file = container["command"][container["command"].index("--admin-token-file") + 1]
    assert token_file == f"{mount['mountPath']}/token"


def test_spool_is_a_claim_template_unless_explicitly_ephemeral() -> None:
    with_claim = build_statefulset(OWNER, FULL, SETTINGS)
    (claim,) = with_claim["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert "spool" not in {v["name"] for v in pod(with_claim)["volumes"]}
    (default,) = build_statefulset(OWNER, MINIMAL, SETTINGS)["spec"]["volumeClaimTemplates"]
    assert default["spec"]["resources"]["requests"]["storage"] == "1Gi", "persistent by default"
    without = build_statefulset(OWNER, parse_spec({"queue": {"ephemeral": True}}), SETTINGS)
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


def test_long_secret_names_get_valid_volume_names() -> None:
    name = "a" * 60 + ".example"
    spec = parse_spec({"tls": {"secretName": name}, "listeners": [{"name": "s", "port": 465, "tls": "implicit"}]})
    volumes = pod(build_statefulset(OWNER, spec, SETTINGS))["volumes"]
    (secret,) = [v for v in volumes if "secret" in v and v["name"] not in ("admin-token", "dkim-keys")]
    assert len(secret["name"]) <= 63 and "." not in secret["name"]
    assert secret["secret"]["secretName"] == name


def test_the_relays_grace_is_derived_from_the_pods_with_a_margin() -> None:
    for tgps, grace in [(600, 570), (30, 24), (5, 4), (0, 0)]:
        assert relay_grace_seconds(tgps) == grace
        sts = build_statefulset(OWNER, FULL, Settings(termination_grace_seconds=tgps))
        (container,) = pod(sts)["containers"]
        assert pod(sts)["terminationGracePeriodSeconds"] == tgps
        assert container["command"][container["command"].index("--grace") + 1] == str(grace)


def test_privileged_ports_get_the_unprivileged_port_sysctl_only_when_needed() -> None:
    low = parse_spec({"listeners": [{"name": "smtp", "port": 25}, {"name": "alt", "port": 2525}]})
    assert pod(build_statefulset(OWNER, low, SETTINGS))["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    high = parse_spec({"listeners": [{"name": "alt", "port": 2525}]})
    assert "sysctls" not in pod(build_statefulset(OWNER, high, SETTINGS))["securityContext"]


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare(1)")
def test_the_sysctl_lets_the_relays_uid_bind_port_25(tmp_path: Path) -> None:
    """In a fresh network namespace, as the relay pods' uid: EACCES without the sysctl, bound with it."""
    (sysctl,) = pod(build_statefulset(OWNER, parse_spec({"listeners": [{"name": "smtp", "port": 25}]}), SETTINGS))[
        "securityContext"
    ]["sysctls"]
    bind = "import socket; socket.socket().bind(('127.0.0.1', 25)); print('bound')"
    as_relay = (
        f'setpriv --reuid {RUN_AS} --regid {RUN_AS} --clear-groups {sys.base_exec_prefix}/bin/python3 -c "{bind}"'
    )
    set_sysctl = f"sysctl -qw {sysctl['name']}={sysctl['value']}"
    without = subprocess.run(["unshare", "-n", "sh", "-c", as_relay], capture_output=True, text=True, timeout=30)
    assert without.returncode != 0 and "Permission denied" in without.stderr
    with_it = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"{set_sysctl} && {as_relay}"], capture_output=True, text=True, timeout=30
    )
    assert with_it.returncode == 0 and with_it.stdout.strip() == "bound", with_it.stderr
