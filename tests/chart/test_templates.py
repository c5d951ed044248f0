"""The chart's templates agree with the operator's code: every setting has its variable, every kind
the operator touches its RBAC rule. Plain text checks, no Helm needed."""

from __future__ import annotations

import re
from pathlib import Path

from relay_operator.kube import KINDS
from relay_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_in_the_chart() -> None:
    deployment = (ROOT / "charts/relayfleet/templates/deployment.yaml").read_text()
    for name in Settings.__dataclass_fields__:
        assert f"RELAYFLEET_{name.upper()}" in deployment


def test_rbac_grants_what_the_operator_uses() -> None:
    rbac = (ROOT / "charts/relayfleet/templates/rbac.yaml").read_text()
    for kind, info in KINDS.items():
        assert re.search(rf"\b{info.plural}\b", rbac), f"{kind} ({info.plural}) missing from the ClusterRole"
    for needed in ("smtprelays/status", "smtprelays/finalizers", "customresourcedefinitions", "namespaces", "events"):
        assert needed in rbac
    assert "'*'" not in rbac and '"*"' not in rbac and "[*]" not in rbac
