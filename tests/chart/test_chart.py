"""The Helm chart lints, renders, and its operator pod follows the Kubernetes security conventions.

Helm 4 is installed into .tools/bin by `make test` (.ci/install-peers.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relayfleet"
HELM = str(ROOT / ".tools" / "bin" / "helm") if (ROOT / ".tools" / "bin" / "helm").exists() else shutil.which("helm")

pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed: run `make peers`")


def _helm(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _render(*sets: str) -> list[dict[str, Any]]:
    args = [arg for value in sets for arg in ("--set", value)]
    return [doc for doc in yaml.safe_load_all(_helm("template", "rf", str(CHART), "--include-crds", *args)) if doc]


def test_chart_lints() -> None:
    assert "0 chart(s) failed" in _helm("lint", str(CHART))


def test_operator_pod_is_non_root_with_read_only_root() -> None:
    (deployment,) = [d for d in _render() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert security["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] and labels["app.kubernetes.io/instance"] == "rf"


def test_chart_ships_the_generated_crds_and_least_privilege_rbac() -> None:
    docs = _render()
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {"smtprelays.relayfleet.io", "sendingdomains.relayfleet.io"}
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", []), rule
    secrets = [r for r in role["rules"] if "secrets" in r.get("resources", [])]
    # delete: revoked DKIM key Secrets; never list or watch, which would read every Secret of the cluster
    assert secrets and all(not {"list", "watch"} & set(r["verbs"]) for r in secrets)


def test_the_charts_kubernetes_floor_is_the_version_the_emulator_serves() -> None:
    """The CRDs' CEL rules use isCIDR/isIP (CRDs may from 1.31): the chart declares that floor, and the API
    emulator every operator test runs against reports exactly that version."""
    from tests.kube.emulator import KubeEmulator

    chart = yaml.safe_load((ROOT / "charts/relayfleet/Chart.yaml").read_text())
    floor = chart["kubeVersion"].removeprefix(">=").removesuffix("-0")
    assert floor == KubeEmulator().kubernetes_version
    crds = "".join(p.read_text() for p in (ROOT / "crds").glob("*.yaml"))
    assert "isCIDR" in crds or "isIP" in crds, "drop the floor (and this test) when no rule needs the 1.31 library"


def _render_release(release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    args = [arg for value in values for arg in ("--set", value)]
    out = _helm("template", release, str(CHART), "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict)]


@pytest.mark.parametrize("values", [(), ("watchNamespaces={mail,bulk}",)], ids=["cluster-wide", "namespaced"])
def test_two_releases_side_by_side_share_no_name(values: tuple[str, ...]) -> None:
    """Same release name in two namespaces, or two release names in one: no object is claimed twice."""
    releases = [("relayfleet", "team-a"), ("relayfleet", "team-b"), ("other", "team-a")]
    seen: dict[tuple[str, str, str], str] = {}
    for release, namespace in releases:
        for doc in _render_release(release, namespace, *values):
            if doc["kind"] == "CustomResourceDefinition":
                continue  # shared by design: one definition per cluster, from crds/
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            assert key not in seen, f"{key} rendered by {seen.get(key)} and {release}/{namespace}"
            seen[key] = f"{release}/{namespace}"
    binding = next(d for d in _render_release("relayfleet", "team-a") if d["kind"] == "ClusterRoleBinding")
    assert binding["metadata"]["name"] == "relayfleet-team-a"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "relayfleet", "namespace": "team-a"}]


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("resyncSeconds=-1", "at '/resyncSeconds': exclusiveMinimum: got -1, want 0"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("watchNamespaces={Mail_Team}", "at '/watchNamespaces/0'"),
        ("dnsNameservers={dns.example.com}", "at '/dnsNameservers/0'"),
        ("telemetry.concurrency=0", "at '/telemetry/concurrency'"),
        ("resyncSecond=30", "additional properties 'resyncSecond' not allowed"),
    ],
)
def test_wrong_values_fail_at_install_with_the_key_named(value: str, refusal: str) -> None:
    """values.schema.json: a typo or an impossible value is refused by helm itself, naming the key."""
    assert HELM is not None
    result = subprocess.run(
        [HELM, "template", "rf", str(CHART), "--set", value], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and refusal in result.stderr, result.stderr


def test_every_value_is_in_the_schema_and_the_notes_say_what_to_do_next() -> None:
    import json

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"]), "every key of values.yaml is described, and only those"
    notes = _helm("install", "rf", str(CHART), "--dry-run=client", "--namespace", "relayfleet")
    assert "kubectl apply -f examples/smtprelay.yaml" in notes and "kubectl get smr" in notes
    assert "deployment/rf-relayfleet" in notes
