"""`helm lint` and `helm template` with the values files of tests/chart/values/, every rendered object checked
offline against the Kubernetes OpenAPI schema of each supported version (kubernetes-validate, strict: unknown
fields fail too), the SmtpRelay against our own CRD on the API emulator, and the values the schema refuses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.helm import CHART, VALUES, helm, needs_helm, one, render
from tests.kube.client import accepted, send
from tests.peers.kube import KubeApi

pytestmark = needs_helm

FILES = sorted(VALUES.glob("*.yaml"))
REFUSED = sorted((VALUES / "refused").glob("*.yaml"))
VERSIONS = [f"1.{minor}.0" for minor in range(31, 38)]
"""Chart.yaml's kubeVersion floor (1.31) up to the newest kubernetes-validate 1.37 ships schemas for."""
OWN_KINDS = {("relayfleet.io/v1alpha1", "SmtpRelay")}
"""Kinds of our own CRDs: validated against those CRDs on the emulator instead (below)."""


@pytest.mark.parametrize("values", FILES, ids=[p.stem for p in FILES])
def test_the_chart_lints_with(values: Path) -> None:
    result = helm("lint", str(CHART), "--strict", "-f", str(values))
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("values", FILES, ids=[p.stem for p in FILES])
def test_every_rendered_object_is_valid_kubernetes(values: Path) -> None:
    """Strict: a misspelt or misplaced field (unknown to that version's schema) fails like a wrong type."""
    docs = render(values=[values], crds=True)
    problems: list[str] = []
    for version in VERSIONS:
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in OWN_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{version} {doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
    assert problems == []


def test_the_offline_validation_refuses_what_an_apiserver_would() -> None:
    """The check above can fail: an unknown field and a wrong type in the rendered Deployment are caught."""
    deployment = one(render(values=[VALUES / "everything.yaml"]), "Deployment")
    for mutate in (
        lambda d: d["spec"]["template"]["spec"].update(nodeSelectors={"a": "b"}),  # unknown field
        lambda d: d["spec"].update(replicas="three"),  # wrong type
    ):
        broken = copy.deepcopy(deployment)
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def _crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((CHART / "crds").glob("*.yaml"))]


@pytest.mark.parametrize("values", ["everything.yaml", None], ids=["everything", "relay-defaults"])
def test_the_example_relay_is_valid_for_our_crd(kube_api: KubeApi, values: str | None) -> None:
    """The rendered SmtpRelay, created on the emulator with the chart's CRDs: structural schema, CEL rules,
    fieldValidation=Strict (unknown fields refused), as the apiserver would at `helm install`."""
    for crd in _crds():
        kube_api.register_crd(crd)
    docs = render("relay.enabled=true", values=[VALUES / values] if values else None)
    relay = one(docs, "SmtpRelay")
    path = f"/apis/relayfleet.io/v1alpha1/namespaces/{relay['metadata']['namespace']}/smtprelays"
    created = accepted(send(kube_api, "POST", path, relay, fieldValidation="Strict"))
    assert "capture" in created["spec"]["routing"]["default"] and created["spec"]["listeners"][0]["name"] == "smtp"


def test_a_wrong_relay_spec_is_refused_by_the_crd_naming_the_field(kube_api: KubeApi) -> None:
    for crd in _crds():
        kube_api.register_crd(crd)
    relay = one(render("relay.enabled=true", "relay.spec.queue.storage=lots"), "SmtpRelay")
    reply = send(kube_api, "POST", "/apis/relayfleet.io/v1alpha1/namespaces/relayfleet/smtprelays", relay)
    assert reply.code == 422 and "spec.queue.storage" in reply.message, reply.body


@pytest.mark.parametrize("values", REFUSED, ids=[p.stem for p in REFUSED])
def test_values_the_schema_refuses(values: Path) -> None:
    """Each file's first line says what helm must answer (# refused: <text>)."""
    expected = values.read_text().splitlines()[0].removeprefix("# refused: ")
    result = helm("template", "rf", str(CHART), "-f", str(values), check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_the_oldest_supported_kubernetes_renders_and_an_older_one_is_refused() -> None:
    everything = ["-f", str(VALUES / "everything.yaml")]
    assert helm("template", "rf", str(CHART), "--kube-version", VERSIONS[0], *everything).stdout
    result = helm("template", "rf", str(CHART), "--kube-version", "1.30.9", *everything, check=False)
    assert result.returncode != 0 and "chart requires kubeVersion: >=1.31.0-0" in result.stderr, result.stderr
