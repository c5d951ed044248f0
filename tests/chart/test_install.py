"""What `helm install` creates beyond the defaults: peered operator pods (replicaCount > 1) with their budget and
RBAC, the CRDs as templates (crds.enabled), the operator pod's scheduling and probes, the example relay and its
`helm test` hook, and the names two HA releases with example relays keep apart."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, VALUES, helm, needs_helm, one, render

pytestmark = needs_helm


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_one_operator_pod_runs_standalone_without_peering_objects() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    args = pod_spec(docs)["containers"][0]["args"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in args and not [a for a in args if a.startswith("--peering")]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" or "peering" in d["metadata"]["name"]]


def test_several_operator_pods_peer_with_a_budget_and_rbac_for_their_peering_object() -> None:
    docs = render("replicaCount=3")
    deployment = one(docs, "Deployment")
    container = pod_spec(docs)["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "--peering=rf-relayfleet-relayfleet" in container["args"] and "--standalone" not in container["args"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    crd = one(docs, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["names"]["kind"] == "ClusterKopfPeering"
    role = one(docs, "ClusterRole", "rf-relayfleet-relayfleet-peering")
    assert role["rules"] == [
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list", "watch", "create"]},
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
         "resourceNames": ["rf-relayfleet-relayfleet"], "verbs": ["patch"]},
    ]  # fmt: skip
    binding = one(docs, "ClusterRoleBinding", "rf-relayfleet-relayfleet-peering")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rf-relayfleet", "namespace": "relayfleet"}]
    # a cluster that has the peering CRD from another release or kopf operator: RBAC only
    without = render("replicaCount=3", "peering.installCRD=false")
    assert not [d for d in without if d["kind"] == "CustomResourceDefinition"]
    assert one(without, "ClusterRole", "rf-relayfleet-relayfleet-peering")["rules"] == role["rules"]


def test_watch_namespaces_peer_cluster_wide_too() -> None:
    """The peering object is cluster-scoped whatever the watch scope: one per release, one ClusterRole for it."""
    docs = render("replicaCount=2", "watchNamespaces={mail}")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"} == {"rf-relayfleet-relayfleet-peering"}
    assert "--peering=rf-relayfleet-relayfleet" in pod_spec(docs)["containers"][0]["args"]


def test_crds_as_templates_are_the_shipped_files_kept_on_uninstall() -> None:
    assert not [d for d in render() if d["kind"] == "CustomResourceDefinition"], "crds/ only, by default"
    shipped = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text()) for p in (CHART / "crds").glob("*"))}
    for keep in (True, False):
        docs = render("crds.enabled=true", f"crds.keep={keep}")
        templated = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        assert {d["metadata"]["name"] for d in templated} == set(shipped)
        for crd in templated:
            meta = crd["metadata"]
            assert meta.pop("annotations", {}) == ({"helm.sh/resource-policy": "keep"} if keep else {})
            assert meta["labels"]["app.kubernetes.io/instance"] == "rf"
            original = shipped[meta["name"]]
            assert meta.pop("labels").items() >= original["metadata"]["labels"].items()
            assert {**crd, "metadata": meta} == {**original, "metadata": {"name": meta["name"]}}


def test_the_operator_pod_takes_the_scheduling_and_pull_values() -> None:
    docs = render(values=[VALUES / "everything.yaml"])
    pod = one(docs, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert spec["priorityClassName"] == "high-priority"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in spec["affinity"]
    (spread,) = spec["topologySpreadConstraints"]
    selector = one(docs, "Deployment")["spec"]["selector"]
    assert spread["labelSelector"] == selector and spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "mail-team"}
    assert pod["metadata"]["labels"]["team"] == "mail"
    # podLabels cannot steal the selector's labels: the chart's win
    labels = one(render("podLabels.app\\.kubernetes\\.io/name=other"), "Deployment")["spec"]["template"]["metadata"]
    assert labels["labels"]["app.kubernetes.io/name"] == "relayfleet-operator"


def test_probes_ask_kopfs_liveness_endpoint() -> None:
    container = pod_spec(render())["containers"][0]
    endpoint = next(a for a in container["args"] if a.startswith("--liveness="))
    assert endpoint == "--liveness=http://0.0.0.0:8080/healthz"
    port = next(p for p in container["ports"] if p["containerPort"] == 8080)["name"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}, probe


def test_the_example_relay_and_its_helm_test_hook() -> None:
    assert not [d for d in render() if d["kind"] in ("SmtpRelay", "Pod")], "relay.enabled is off by default"
    docs = render("relay.enabled=true", "relay.replicas=3", "relayImage=registry.example/relay:1")
    relay = one(docs, "SmtpRelay")
    assert relay["metadata"]["name"] == "rf-relayfleet-relay" and relay["spec"]["replicas"] == 3
    assert relay["spec"]["routing"] == {"default": {"capture": {}}}
    test = one(docs, "Pod")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = test["spec"]["containers"][0]
    assert container["image"] == "registry.example/relay:1"
    assert "--smtp=rf-relayfleet-relay.relayfleet.svc:2525" in container["args"]
    assert "--pods=rf-relayfleet-relay-pods.relayfleet.svc" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert test["spec"]["securityContext"]["runAsNonRoot"] is True
    script = one(docs, "ConfigMap")
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert script["data"]["relay-test.py"] == (CHART / "files" / "relay-test.py").read_text()
    # relay.spec is merged over the example's fields
    merged = one(render("relay.enabled=true", "relay.spec.queue.ephemeral=true", "relay.name=trial"), "SmtpRelay")
    assert merged["metadata"]["name"] == "trial" and merged["spec"]["queue"] == {"ephemeral": True}
    assert merged["spec"]["routing"] == {"default": {"capture": {}}}


def test_the_notes_say_how_to_check_the_example_relay_and_the_peering() -> None:
    notes = helm(
        "install", "rf", str(CHART), "--dry-run=client", "-n", "mail", "--set", "relay.enabled=true",
        "--set", "replicaCount=2",
    ).stdout  # fmt: skip
    assert "helm test rf -n mail --logs" in notes
    assert 'smtplib.SMTP("rf-relayfleet-relay", 2525)' in notes
    assert "kubectl get clusterkopfpeering rf-relayfleet-mail" in notes
    plain = helm("install", "rf", str(CHART), "--dry-run=client", "-n", "mail").stdout
    assert "helm test" not in plain and "clusterkopfpeering" not in plain


@pytest.mark.parametrize("values", [VALUES / "ha.yaml", VALUES / "everything.yaml"], ids=["ha", "everything"])
def test_two_ha_releases_with_example_relays_share_no_name(values: Any) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for release, namespace in [("relayfleet", "team-a"), ("relayfleet", "team-b"), ("other", "team-a")]:
        for doc in render("relay.enabled=true", values=[values], release=release, namespace=namespace):
            if doc["kind"] == "CustomResourceDefinition":
                continue  # one definition per cluster (helm.sh/resource-policy: keep; peering.installCRD=false)
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            assert key not in seen, f"{key} rendered by {seen.get(key)} and {release}/{namespace}"
            seen[key] = f"{release}/{namespace}"
