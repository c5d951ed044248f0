"""Settings from the environment, the console script's kopf command line, and the chart's RBAC."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay_operator.cli import kopf_argv
from relay_operator.kube import KINDS
from relay_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_settings_defaults_and_env() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().relay_image == "ghcr.io/relayfleet/relay:0.1.0"
    settings = Settings.from_env(
        {
            "RELAYFLEET_RELAY_IMAGE": "r.example/relay:9",
            "RELAYFLEET_RESYNC_SECONDS": "15",
            "RELAYFLEET_TERMINATION_GRACE_SECONDS": "900",
            "RELAYFLEET_SERVICE_MONITOR": "true",
            "RELAYFLEET_NETWORK_POLICY": "0",
        }
    )
    assert settings == Settings(
        relay_image="r.example/relay:9",
        resync_seconds=15.0,
        termination_grace_seconds=900,
        service_monitor=True,
        network_policy=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYFLEET_SERVICE_MONITOR": "maybe"}, "RELAYFLEET_SERVICE_MONITOR: not a boolean"),
        ({"RELAYFLEET_RESYNC_SECONDS": "soon"}, "RELAYFLEET_RESYNC_SECONDS"),
        ({"RELAYFLEET_RESYNC_SECONDS": "0"}, "must be > 0"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)


def test_every_setting_is_documented_in_the_chart() -> None:
    deployment = (ROOT / "charts/relayfleet/templates/deployment.yaml").read_text()
    for name in Settings.__dataclass_fields__:
        assert f"RELAYFLEET_{name.upper()}" in deployment


def test_kopf_command_line() -> None:
    assert kopf_argv([]) == ["run", "-m", "relay_operator.handlers", "--all-namespaces"]
    assert kopf_argv(["-n", "mail", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]) == [
        "run",
        "-m",
        "relay_operator.handlers",
        "-n",
        "mail",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert kopf_argv(["--namespace=mail", "-v"])[-2:] == ["--namespace=mail", "-v"]


def test_rbac_grants_what_the_operator_uses() -> None:
    rbac = (ROOT / "charts/relayfleet/templates/rbac.yaml").read_text()
    for kind, info in KINDS.items():
        assert re.search(rf"\b{info.plural}\b", rbac), f"{kind} ({info.plural}) missing from the ClusterRole"
    for needed in ("smtprelays/status", "smtprelays/finalizers", "customresourcedefinitions", "namespaces", "events"):
        assert needed in rbac
    assert "'*'" not in rbac and '"*"' not in rbac and "[*]" not in rbac
