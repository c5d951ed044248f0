"""The chart's RBAC is exactly what the operator uses: every request it makes, recorded by the emulator while
the operator runs as the chart's ServiceAccount, is compared with the rendered chart's rules both ways.

A request no rule allows is a missing grant (the operator would get 403 in a cluster); a rule entry no request
used is an unused grant (least privilege). The scenario exercises every code path that talks to the API:
create, spec change, drift healing, an immutable-field recreate, pruning of optional children after the
settings change, deletion with spool claims, events; kopf's own watches, annotations and finalizers; a
SendingDomain's key generated, rotated and its revoked key's Secret deleted, and a brought key read.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from crdgen.documents import sendingdomain_crd, smtprelay_crd
from relay_operator.settings import Settings
from tests.harness.waiting import wait_for
from tests.kube.audit import bound_rules, rbac_diff
from tests.operator.domains.dns import DOMAIN, EGRESS, expected, reload, zone
from tests.operator.handlers.test_e2e import GROUP, MERGE, EmulatorApi, Operator, get, ok, paths
from tests.peers.dns import DnsServer, ZoneSpec
from tests.peers.kube import KubeApi

ROOT = Path(__file__).resolve().parents[3]
HELM = ROOT / ".tools/bin/helm"
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor",
                  "listKind": "ServiceMonitorList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip


def chart(*values: str) -> list[dict[str, Any]]:
    if not HELM.exists():
        pytest.skip("helm is not installed in .tools/bin: run `make peers`")
    args = [str(HELM), "template", "rf", str(ROOT / "charts/relayfleet"), "--namespace", "relayfleet"]
    for value in values:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(rendered) if isinstance(d, dict)]


def install_rbac(admin: EmulatorApi, docs: list[dict[str, Any]]) -> str:
    """Create the chart's ServiceAccount and RBAC objects; the ServiceAccount's name."""
    ok(
        admin,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "relayfleet"}},
    )
    plural = {"ServiceAccount": "/api/v1/namespaces/relayfleet/serviceaccounts",
              "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
              "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"}  # fmt: skip
    for doc in docs:
        if doc["kind"] in plural:
            ok(admin, "POST", plural[doc["kind"]], doc)
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")


def domain_scenario(admin: EmulatorApi, server: DnsServer) -> None:
    """A SendingDomain through its whole rotation (the audited relay's queue.retry.maxAge is 1s), then deleted."""
    ns, sd = "default", f"{GROUP}/namespaces/default/sendingdomains/audited"
    body = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SendingDomain", "metadata": {"name": "audited"},
            "spec": {"domain": DOMAIN, "relays": ["audited"], "spf": {"egressIps": [EGRESS]},
                     "dns": {"nameservers": [server.nameserver()]}}}  # fmt: skip

    def dkim() -> dict[str, Any]:
        return dict(((get(admin, sd) or {}).get("status") or {}).get("dkim") or {})

    def annotate(key: str, value: str) -> None:
        ok(admin, "PATCH", sd, {"metadata": {"annotations": {f"relayfleet.io/{key}": value}}}, MERGE)

    ok(admin, "POST", f"{GROUP}/namespaces/{ns}/sendingdomains", body)
    first = wait_for(lambda: dkim().get("pendingSelector"))
    published = {first: expected(ok(admin, "GET", sd)["status"], first)}
    reload(server, zone(published))
    annotate("recheck", "1")
    wait_for(lambda: dkim().get("activeSelector") == first)
    # the relay it names gets the active key in its one dkim-keys Secret (created, then patched)...
    keys = f"/api/v1/namespaces/{ns}/secrets/audited-dkim-keys"
    wait_for(lambda: list((get(admin, keys) or {}).get("data") or {}) == ["audited.private.pem"])
    annotate("rotate-dkim", "1")
    second = wait_for(lambda: dkim().get("pendingSelector"))
    published[second] = expected(ok(admin, "GET", sd)["status"], second)
    reload(server, zone(published))
    annotate("recheck", "2")
    wait_for(lambda: dkim().get("revokedSelector") == first)
    time.sleep(1.1)  # the relay's queue.retry.maxAge
    annotate("recheck", "3")
    wait_for(lambda: dkim().get("safeToRemoveRevoked") is True)
    assert get(admin, f"/api/v1/namespaces/{ns}/secrets/audited-dkim-{first}") is None
    ok(admin, "DELETE", sd)
    wait_for(lambda: get(admin, sd) is None)
    wait_for(lambda: not (get(admin, keys) or {}).get("data"))  # ...and loses it with the domain


def scenario(admin: EmulatorApi, operator_api: EmulatorApi, server: DnsServer) -> None:
    ns = "default"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"}, "stringData": {"app": "pw"}}
    ok(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    relay = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SmtpRelay",
        "metadata": {"name": "audited"},
        "spec": {
            "listeners": [{"name": "relay", "port": 2525}, {"name": "sub", "port": 587, "auth": "required"}],
            "clients": {"users": {"secretName": "users"}},
            "queue": {"ephemeral": True, "deleteClaimsOnDelete": True, "retry": {"maxAge": "1s"}},
        },
    }
    p = paths(ns, "audited")
    p["NetworkPolicy"] = f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/audited"
    p["ServiceMonitor"] = f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/audited"
    settings = Settings(network_policy=True, service_monitor=True, termination_grace_seconds=30, resync_seconds=1)
    with Operator(operator_api, ns, settings):
        ok(admin, "POST", f"{GROUP}/namespaces/{ns}/smtprelays", relay)
        wait_for(lambda: all(get(admin, path) for path in p.values()))
        # the resync reads the pods' queue figures (nothing listens at the emulated pods' loopback addresses)
        queue = wait_for(lambda: (ok(admin, "GET", p["relay"]).get("status") or {}).get("queue"), timeout=20)
        assert queue["podsReporting"] == 0 and queue["podsUnreachable"] == len(queue["unreachable"]) == 2, queue
        domain_scenario(admin, server)
        # a spec change patches the ConfigMap, the Services, the StatefulSet and the NetworkPolicy
        listeners = [*relay["spec"]["listeners"], {"name": "alt", "port": 2526}]
        ok(admin, "PATCH", p["relay"], {"spec": {"listeners": listeners}}, MERGE)
        wait_for(lambda: 2526 in [x["port"] for x in ok(admin, "GET", p["Service"])["spec"]["ports"]])
        # hand edits are put back (the PDB and ServiceMonitor are otherwise never patched)
        for kind in ("PodDisruptionBudget", "ServiceMonitor"):
            ok(admin, "PATCH", p[kind], {"metadata": {"labels": {"app.kubernetes.io/instance": "x"}}}, MERGE)
            wait_for(
                lambda k=kind: ok(admin, "GET", p[k])["metadata"]["labels"]["app.kubernetes.io/instance"] == "audited"
            )
        # spool storage switched on: the StatefulSet's volumeClaimTemplates cannot change, so it is recreated
        ok(admin, "PATCH", p["relay"], {"spec": {"queue": {"ephemeral": False}}}, MERGE)
        wait_for(lambda: ((get(admin, p["StatefulSet"]) or {}).get("spec") or {}).get("volumeClaimTemplates"))
        claims = f"/api/v1/namespaces/{ns}/persistentvolumeclaims"
        wait_for(
            lambda: any(c["metadata"]["name"].startswith("spool-audited-") for c in ok(admin, "GET", claims)["items"])
        )
    with Operator(operator_api, ns, Settings(termination_grace_seconds=30)):  # the optional children are pruned
        wait_for(lambda: get(admin, p["NetworkPolicy"]) is None and get(admin, p["ServiceMonitor"]) is None)
        ok(admin, "DELETE", p["relay"])
        wait_for(lambda: get(admin, p["relay"]) is None, timeout=30)
        claims = ok(admin, "GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]
        assert not [c for c in claims if c["metadata"]["name"].startswith("spool-audited-")]


@pytest.mark.parametrize("enforcement", [False, True], ids=["vanilla", "owner-references-enforced"])
def test_the_chart_grants_exactly_what_the_operator_uses(
    kube_api: KubeApi, enforcement: bool, dns_server_factory: Callable[[ZoneSpec], DnsServer]
) -> None:
    """Also with OwnerReferencesPermissionEnforcement on (as OpenShift runs it, chart value of that name):
    setting an ownerReference then needs delete on the child, blockOwnerDeletion update on smtprelays/finalizers."""
    kube_api._call(lambda: setattr(kube_api.emulator, "owner_references_permission_enforcement", enforcement))
    docs = chart("networkPolicy=true", "serviceMonitor=true", f"ownerReferencesPermissionEnforcement={enforcement}")
    kube_api.register_crd(smtprelay_crd())
    kube_api.register_crd(sendingdomain_crd())
    kube_api.register_crd(SERVICE_MONITOR_CRD)
    admin = EmulatorApi(kube_api)
    account = install_rbac(admin, docs)
    operator_api = EmulatorApi(kube_api.as_service_account("relayfleet", account))
    scenario(admin, operator_api, dns_server_factory({DOMAIN: zone()}))
    requests = kube_api._call(lambda: kube_api.audit.requests(operator_api.api.user))
    refused = kube_api._call(lambda: kube_api.audit.requests(operator_api.api.user, allowed=False))
    assert refused == [], f"the operator was refused: {refused}"
    missing, unused = rbac_diff([r for r in requests if r.resource_request], bound_rules(docs, "relayfleet", account))
    assert missing == set(), f"grants the operator needs but the chart lacks: {sorted(missing)}"
    assert unused == set(), f"grants the chart gives but the operator never used: {sorted(unused)}"


def test_without_the_optional_children_their_writes_are_not_granted() -> None:
    """networkPolicy/serviceMonitor off: only what pruning needs (get, delete) stays."""
    rules = bound_rules(chart(), "relayfleet", "rf-relayfleet")
    optional = {
        r["apiGroups"][0]: r["verbs"]
        for r in rules
        if r["apiGroups"][0] in ("networking.k8s.io", "monitoring.coreos.com")
    }
    assert optional == {"networking.k8s.io": ["get", "delete"], "monitoring.coreos.com": ["get", "delete"]}


def test_watch_namespaces_get_roles_in_those_namespaces_only() -> None:
    docs = chart("watchNamespaces={mail,bulk}")
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {("Role", "mail"), ("RoleBinding", "mail"), ("Role", "bulk"), ("RoleBinding", "bulk")}
    assert bound_rules(docs, "relayfleet", "rf-relayfleet") == bound_rules(chart(), "relayfleet", "rf-relayfleet") * 2
