"""docs/security.md states what the code does: each claim about the pods, the token, the NetworkPolicy and the
operator's Secret permissions is checked against what the operator renders and the chart grants."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from relay_operator.relays.render.admin_token import new_admin_token
from relay_operator.relays.render.common import ADMIN_PORT
from relay_operator.relays.render.extras import build_networkpolicy
from relay_operator.relays.render.statefulset import RUN_AS, UNPRIVILEGED_PORT_SYSCTL, build_statefulset
from tests.operator.relays.render.specs import FULL, MINIMAL, OWNER, SETTINGS, pod

ROOT = Path(__file__).resolve().parents[1]
DOC = " ".join((ROOT / "docs" / "security.md").read_text().split())  # claims may wrap across lines


def relay_pod(spec: Any = FULL) -> dict[str, Any]:
    return pod(build_statefulset(OWNER, spec, SETTINGS))


def test_relay_pods_are_confined_as_the_doc_says() -> None:
    spec = relay_pod()
    security, (container,) = spec["securityContext"], spec["containers"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == RUN_AS
    assert f"uid and gid {RUN_AS} (also `fsGroup`" in DOC
    assert security["seccompProfile"] == {"type": "RuntimeDefault"} and "seccomp `RuntimeDefault`" in DOC
    confined = container["securityContext"]
    assert confined["readOnlyRootFilesystem"] is True and "a read-only root filesystem" in DOC
    assert confined["allowPrivilegeEscalation"] is False and "no privilege escalation" in DOC
    assert confined["capabilities"] == {"drop": ["ALL"]} and "every capability dropped" in DOC
    assert spec["automountServiceAccountToken"] is False and "`automountServiceAccountToken: false`" in DOC
    assert spec["enableServiceLinks"] is False and "`enableServiceLinks: false`" in DOC


def test_the_low_port_sysctl_is_set_only_when_a_listener_needs_it() -> None:
    assert any(listener.port < 1024 for listener in FULL.listeners)
    assert {"name": UNPRIVILEGED_PORT_SYSCTL, "value": "0"} in relay_pod(FULL)["securityContext"]["sysctls"]
    assert "sysctls" not in relay_pod(MINIMAL)["securityContext"]
    assert f"`{UNPRIVILEGED_PORT_SYSCTL}=0`" in DOC and "only when a listener needs it" in DOC


def test_tmp_is_memory_and_secrets_are_read_only_0440() -> None:
    spec = relay_pod()
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    assert "a memory-backed emptyDir (64Mi)" in DOC
    secret_volumes = [v for v in spec["volumes"] if "secret" in v]
    assert secret_volumes and all(v["secret"]["defaultMode"] == 0o440 for v in secret_volumes)
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert all(mounts[v["name"]].get("readOnly") is True for v in secret_volumes)
    assert "read-only, mode 0440, group 65532" in DOC


def test_the_admin_token_has_256_random_bits() -> None:
    token = new_admin_token()
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 == 256
    assert "256 random bits" in DOC and "shorter than 16 characters is refused" in DOC


def test_the_network_policy_admits_the_admin_port_as_the_doc_says() -> None:
    policy = build_networkpolicy(OWNER, FULL, SETTINGS)["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "No egress policy is rendered" in DOC
    listeners, admin = policy["ingress"]
    assert "from" not in listeners and {p["port"] for p in listeners["ports"]} == {lst.port for lst in FULL.listeners}
    assert admin["ports"] == [{"port": ADMIN_PORT, "protocol": "TCP"}] and f"admin port {ADMIN_PORT}" in DOC
    # the operator, the relay's own pods (hand-off), monitoring
    assert [bool(peer.get("podSelector")) for peer in admin["from"]] == [True, True, False]
    assert "from the SmtpRelay's own pods" in DOC
    assert "`kubernetes.io/metadata.name=monitoring`" in DOC


def test_the_operators_secret_permissions_are_the_ones_listed() -> None:
    rbac = (ROOT / "charts" / "relayfleet" / "templates" / "rbac.yaml").read_text()
    grants = re.findall(r"resources: \[secrets\]\n\s+verbs: \[([a-z, ]+)\]", rbac)
    assert grants, "the chart grants nothing on Secrets"
    verbs = {verb.strip() for grant in grants for verb in grant.split(",")}
    assert verbs == {"get", "create", "patch", "delete"}
    assert "On Secrets it has get, create, patch and delete, and no list or watch" in DOC
