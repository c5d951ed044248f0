"""The chart's monitoring objects: ServiceMonitor, PodMonitor, PrometheusRule and the Grafana dashboard, rendered by
Helm from several values files, validated against the prometheus-operator CRDs' schemas, the rules checked and
unit-tested by promtool, and every metric a panel or an alert queries exported by the code."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from relay_operator.metrics import OperatorMetrics
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.chart.promql import SYNTHETIC, exported_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relayfleet"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
HELM = str(ROOT / ".tools" / "bin" / "helm") if (ROOT / ".tools" / "bin" / "helm").exists() else shutil.which("helm")
PROMTOOL = shutil.which("promtool")
MONITORING = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
ALL_ON = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "1m"}},
    "relays": {"podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "scrapeTimeout": "10s"}},
    "prometheusRule": {
        "enabled": True,
        "labels": {"role": "alert-rules"},
        "runbookBaseUrl": "https://docs.example/ops",
    },
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Mail"}},
}

needs_helm = pytest.mark.skipif(HELM is None, reason="helm not installed: run `make peers`")


def helm(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def render(tmp_path: Path, *values: dict[str, Any], sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` with each mapping as its own values file (-f, in order), then --set."""
    args: list[str] = []
    for i, mapping in enumerate(values):
        path = tmp_path / f"values-{i}.yaml"
        path.write_text(yaml.safe_dump(mapping))
        args += ["-f", str(path)]
    args += [arg for item in sets for arg in ("--set", item)]
    out = helm("template", "rf", str(CHART), "--namespace", "relayfleet", *args).stdout
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(kind: str, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(doc)]


@needs_helm
def test_nothing_of_monitoring_by_default_but_the_operators_metrics_port(tmp_path: Path) -> None:
    docs = render(tmp_path)
    assert not [d for d in docs if d["kind"] in MONITORING]
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
    service = one(docs, "Service", "rf-relayfleet-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["RELAYFLEET_METRICS_ENABLED"], env["RELAYFLEET_METRICS_PORT"]) == ("true", "8081")
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8081}, "kopf's liveness keeps its own port"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    off = render(tmp_path, {"metrics": {"enabled": False}})
    assert not [d for d in off if d["kind"] == "Service"]
    env = {
        e["name"]: e.get("value") for e in one(off, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RELAYFLEET_METRICS_ENABLED"] == "false"


@needs_helm
def test_every_monitoring_object_validates_against_its_crds_schema(tmp_path: Path) -> None:
    docs = render(tmp_path, *({key: value} for key, value in ALL_ON.items()))  # one values file per block
    for kind in MONITORING:
        doc = one(docs, kind)
        assert errors(kind, doc) == [], kind
        assert doc["metadata"]["namespace"] == "relayfleet"
    # the schemas do refuse what the CRDs refuse: a misspelt field, a duration Prometheus cannot read
    monitor = one(docs, "ServiceMonitor")
    typo = json.loads(json.dumps(monitor))
    typo["spec"]["endpoints"][0]["intervall"] = "1m"
    assert errors("ServiceMonitor", typo) == [
        "spec/endpoints/0: Additional properties are not allowed ('intervall' was unexpected)"
    ]
    rule = json.loads(json.dumps(one(docs, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
    assert [e.split(":")[0] for e in errors("PrometheusRule", rule)] == ["spec/groups/0/rules/0/for"]
    pod = json.loads(json.dumps(one(docs, "PodMonitor")))
    pod["spec"]["podMetricsEndpoints"][0]["scheme"] = "ftp"
    assert [e.split(":")[0] for e in errors("PodMonitor", pod)] == ["spec/podMetricsEndpoints/0/scheme"]


@needs_helm
def test_the_monitors_find_the_operator_and_every_relay_pod(tmp_path: Path) -> None:
    docs = render(tmp_path, ALL_ON)
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "rf-relayfleet-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["relayfleet"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["interval"], endpoint["honorLabels"]) == ("metrics", "1m", True)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    pod_monitor = one(docs, "PodMonitor")
    from relay_operator.relays.render.common import ADMIN_PORT_NAME, MANAGED_BY, Owner, labels

    relay_pod_labels = labels(Owner(name="outbound", namespace="mail", uid="u"))
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= relay_pod_labels.items(), "selects relay pods"
    assert pod_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == MANAGED_BY
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert (pod_endpoint["port"], pod_endpoint["path"], pod_endpoint["scrapeTimeout"]) == (
        ADMIN_PORT_NAME,
        "/metrics",
        "10s",
    )
    assert pod_endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"], "targetLabel": "relay"}
    ]
    scoped = one(render(tmp_path, ALL_ON, {"watchNamespaces": ["mail", "bulk"]}), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["mail", "bulk"]}


@needs_helm
def test_every_alert_has_summary_description_and_runbook(tmp_path: Path) -> None:
    rule = one(render(tmp_path, ALL_ON), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "RelayQueueBacklog",
        "RelayBounceRate",
        "RelayUpstreamFailing",
        "RelayPodsNotReady",
        "RelayDown",
        "SendingDomainNotVerified",
        "RelayFleetOperatorDown",
        "RelayFleetOperatorErrors",
    }
    for name, alert in alerts.items():
        notes = alert["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes) and all(len(notes[k]) > 30 for k in notes), name
        assert notes["runbook_url"] == f"https://docs.example/ops#{name.lower()}"
        assert alert["labels"]["severity"] in ("warning", "critical")
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    docs = (ROOT / "docs" / "operations.md").read_text().lower()
    assert all(f"#### {name.lower()}" in docs for name in alerts), "every runbook_url anchor exists in the docs"


@needs_helm
@pytest.mark.peers
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: run `make peers` (Debian package prometheus)")
def test_promtool_checks_the_rules_and_the_alerts_fire_as_intended(tmp_path: Path) -> None:
    """`promtool check rules` on the rendered groups, then `promtool test rules`: tests/chart/alerts_test.yaml feeds
    series to each alert and says which fire, when, with which labels and text."""
    rule = one(render(tmp_path, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    shutil.copy(Path(__file__).with_name("alerts_test.yaml"), tmp_path / "alerts_test.yaml")
    tested = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # the check can fail: a broken expression is refused
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "max by (namespace (relayfleet_operator_condition)"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    broken = promtool("check", "rules", str(tmp_path / "broken.yaml"))
    assert broken.returncode != 0 and "parse error" in broken.stdout + broken.stderr


@needs_helm
def test_the_dashboard_configmap_is_labelled_for_the_grafana_sidecar(tmp_path: Path) -> None:
    docs = render(tmp_path, ALL_ON)
    config = one(docs, "ConfigMap", "rf-relayfleet-relayfleet-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Mail"}
    dashboard = json.loads(config["data"]["relayfleet.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "relayfleet.json").read_text())
    titles = {p["title"] for p in dashboard["panels"] if p["type"] != "row"}
    wanted = ["Queue depth", "Oldest queued message", "Received, delivered, bounced, rejected", "Verdicts by check"]
    assert set(wanted) | {"Delivery latency", "Domains verified"} <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "namespace", "relay"]
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]
    elsewhere = one(render(tmp_path, ALL_ON, {"grafanaDashboard": {"namespace": "monitoring", "sidecarLabel": "dash",
                                                                    "sidecarLabelValue": "yes"}}), "ConfigMap",
                    "rf-relayfleet-relayfleet-dashboard")  # fmt: skip
    assert elsewhere["metadata"]["namespace"] == "monitoring" and elsewhere["metadata"]["labels"]["dash"] == "yes"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def _queries(tmp_path: Path) -> dict[str, str]:
    """Every PromQL expression of the dashboard (panels and variables) and of the rules, by where it is."""
    dashboard = json.loads((CHART / "dashboards" / "relayfleet.json").read_text())
    found = {f"panel {p['title']!r} {t['refId']}": t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<series selector>, <label>): the selector is the query
            inner = variable["query"]["query"].removeprefix("label_values(").removesuffix(")")
            found[f"variable {variable['name']}"] = inner.rsplit(",", 1)[0]
    rule = one(render(tmp_path, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            found[f"alert {r['alert']}"] = r["expr"]
    return found


def _exported() -> set[str]:
    relay = RelayMetrics()
    PolicyMetrics(relay.registry)
    return exported_names(relay.registry, OperatorMetrics().registry) | SYNTHETIC


@needs_helm
def test_every_panel_and_alert_queries_a_metric_the_code_exports(tmp_path: Path) -> None:
    exported = _exported()
    queries = _queries(tmp_path)
    assert len(queries) > 25
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in queries.items()}
    assert {where: names for where, names in unknown.items() if names} == {}
    assert all(metric_names(expr) for expr in queries.values()), "every query selects something"


def test_the_metric_name_check_sees_through_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, kind) (rate(relayfleet_operator_reconcile_duration_seconds_bucket'
            '{kind=~"Smtp.*", handler!="x{y}"}[$__rate_interval] offset 1h))) > bool 1e-3 and on (kind) up == 1'
            ' or absent(smtp_relay_queue_messages{state="active"}) unless ignoring(pod) nope_total')  # fmt: skip
    assert metric_names(expr) == {"relayfleet_operator_reconcile_duration_seconds_bucket", "up",
                                  "smtp_relay_queue_messages", "nope_total"}  # fmt: skip
    exported = _exported()
    assert metric_names(expr) - exported == {"nope_total"}, "a metric nobody exports is caught"
    assert {"smtp_relay_delivered_recipients_total", "smtp_relay_delivery_latency_seconds_bucket",
            "smtp_relay_policy_verdicts_total", "relayfleet_operator_objects_by_condition",
            "relayfleet_operator_reconciles_total"} <= exported  # fmt: skip
    assert "smtp_relay_delivered_recipients" not in exported, "a counter is exported as _total"


@needs_helm
@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("metrics.port=8080", "at '/metrics/port'"),
        ("metrics.serviceMonitor.interval=30 seconds", "at '/metrics/serviceMonitor/interval'"),
        ("relays.podMonitor.enable=true", "additional properties 'enable' not allowed"),
        ("prometheusRule.bounceRatio=2", "at '/prometheusRule/bounceRatio'"),
        ("prometheusRule.queueBacklogFor=soon", "at '/prometheusRule/queueBacklogFor'"),
        ("prometheusRule.runbookBaseUrl=docs/operations.md", "at '/prometheusRule/runbookBaseUrl'"),
        ("grafanaDashboard.sidecarLabel=", "at '/grafanaDashboard/sidecarLabel'"),
        ("grafanaDashboard.namespace=Monitoring", "at '/grafanaDashboard/namespace'"),
        ("grafanaDashboards.enabled=true", "additional properties 'grafanaDashboards' not allowed"),
    ],
)
def test_wrong_monitoring_values_fail_naming_the_key(value: str, refusal: str) -> None:
    result = helm("template", "rf", str(CHART), "--set", value, ok=False)
    assert result.returncode != 0 and refusal in result.stderr, result.stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            ("metrics.enabled=false", "metrics.serviceMonitor.enabled=true"),
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
        (("serviceMonitor=true", "relays.podMonitor.enabled=true"), "would scrape every relay pod twice"),
    ],
)
def test_values_that_contradict_each_other_fail_saying_why(values: tuple[str, ...], refusal: str) -> None:
    result = helm("template", "rf", str(CHART), *[a for v in values for a in ("--set", v)], ok=False)
    assert result.returncode != 0 and refusal in result.stderr, result.stderr


@needs_helm
def test_two_releases_with_monitoring_share_no_name(tmp_path: Path) -> None:
    """The dashboard may go to one shared namespace: its name carries the release's namespace."""
    seen: dict[tuple[str, str, str], str] = {}
    shared = {**ALL_ON, "grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}
    for release, namespace in [("relayfleet", "team-a"), ("relayfleet", "team-b"), ("other", "team-a")]:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(shared))
        out = helm("template", release, str(CHART), "--namespace", namespace, "-f", str(path)).stdout
        for doc in (d for d in yaml.safe_load_all(out) if isinstance(d, dict)):
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            assert key not in seen, f"{key} rendered by {seen.get(key)} and {release}/{namespace}"
            seen[key] = f"{release}/{namespace}"
    assert ("ConfigMap", "monitoring", "relayfleet-team-a-dashboard") in seen


@needs_helm
@pytest.mark.parametrize("version", ["1.31.0", "1.37.0"], ids=["floor", "latest"])
def test_the_built_in_objects_it_adds_validate_strictly(tmp_path: Path, version: str) -> None:
    """The metrics Service, the dashboard ConfigMap and the Deployment with its metrics port, against the Kubernetes
    OpenAPI schemas of the chart's floor (Chart.yaml kubeVersion) and the newest kubernetes-validate knows."""
    import kubernetes_validate

    docs = render(tmp_path, ALL_ON)
    checked = [d for d in docs if d["kind"] in ("Service", "ConfigMap", "Deployment")]
    assert {d["kind"] for d in checked} == {"Service", "ConfigMap", "Deployment"}
    for doc in checked:
        kubernetes_validate.validate(doc, version, strict=True)
    wrong = json.loads(json.dumps(one(docs, "Service", "rf-relayfleet-metrics")))
    wrong["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, version, strict=True)
