"""Status from observed children: conditions, printer fields, transition times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from relay_operator.conditions import status_changed
from relay_operator.relays.render.common import Owner
from relay_operator.relays.status import compute_status, ports_summary
from relay_operator.relays.validation import Problem
from smtp_relay.config.manifest import parse_spec

OWNER = Owner(name="outbound", namespace="mail", uid="u", generation=4)
SPEC = parse_spec(
    {
        "replicas": 3,
        "listeners": [{"name": "a", "port": 2525}, {"name": "b", "port": 465, "tls": "implicit"}],
        "tls": {"secretName": "t"},
    }
)
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def sts(
    replicas: int, ready: int, generation: int = 2, observed: int = 2, updated: int | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "currentRevision": "r1",
            "updateRevision": "r1",
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready() -> None:
    queue = {"depth": 12, "podsReporting": 3, "podsUnreachable": 0, "unreachable": [], "oldestAgeSeconds": 30}
    status = compute_status(OWNER, SPEC, sts(3, 3), None, T0, queue=queue)
    assert {k: v for k, v in status["queue"].items() if v is not None} == queue
    assert status["queue"]["ratesPerMinute"] is None, "named as None: the merge patch removes a stale figure"
    assert status["replicas"] == 3 and status["readyReplicas"] == 3
    assert status["observedGeneration"] == 4
    assert status["selector"] == "app.kubernetes.io/name=relayfleet-relay,app.kubernetes.io/instance=outbound"
    assert status["endpoint"] == "outbound.mail.svc:2525"
    assert status["ports"] == "2525,465/implicit"
    assert status["queueDepth"] == 12
    assert status["phase"] == "Ready"
    cond = conditions(status)
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("True", "AllReplicasReady")
    assert (cond["Progressing"]["status"], cond["Degraded"]["status"]) == ("False", "False")
    for c in cond.values():
        assert c["lastTransitionTime"] == "2026-01-02T03:04:05Z"
        assert c["observedGeneration"] == 4
        assert c["message"]


def test_missing_statefulset_is_progressing() -> None:
    status = compute_status(OWNER, SPEC, None, None, T0)
    cond = conditions(status)
    assert (cond["Progressing"]["status"], cond["Progressing"]["reason"]) == ("True", "Creating")
    assert cond["Ready"]["status"] == "False"
    assert status["phase"] == "Progressing"
    assert status["replicas"] == 0
    # no figures in this refresh: the last ones stand (the telemetry clears the column when no pod answers)
    assert "queueDepth" not in status and "queue" not in status


def test_scaling_and_rolling_are_progressing() -> None:
    scaling = conditions(compute_status(OWNER, SPEC, sts(2, 2), None, T0))
    assert (scaling["Progressing"]["reason"], scaling["Ready"]["reason"]) == ("Scaling", "ReplicasNotReady")
    assert scaling["Ready"]["message"] == "2 of 3 pods ready"
    unseen = conditions(compute_status(OWNER, SPEC, sts(3, 3, generation=3, observed=2), None, T0))
    assert unseen["Progressing"]["reason"] == "Updating"
    rolling = conditions(compute_status(OWNER, SPEC, sts(3, 3, updated=1), None, T0))
    assert rolling["Progressing"]["reason"] == "RollingUpdate"


def test_degraded_names_the_problem_and_keeps_pod_figures() -> None:
    problem = Problem("SecretNotFound", "spec.tls.secretName: Secret 't' not found in namespace mail; create it")
    status = compute_status(OWNER, SPEC, sts(3, 3), None, T0, problems=[problem])
    cond = conditions(status)
    assert (cond["Degraded"]["status"], cond["Degraded"]["reason"]) == ("True", "SecretNotFound")
    assert "spec.tls.secretName" in cond["Degraded"]["message"]
    assert status["phase"] == "Degraded"
    assert status["readyReplicas"] == 3 and cond["Ready"]["status"] == "True"


def test_invalid_spec_reports_what_it_can() -> None:
    status = compute_status(OWNER, None, sts(3, 1), None, T0, problems=[Problem("InvalidSpec", "spec.x: bad")])
    assert "endpoint" not in status and "ports" not in status
    assert status["readyReplicas"] == 1


def test_scaled_to_zero() -> None:
    spec = parse_spec({"replicas": 0})
    cond = conditions(compute_status(OWNER, spec, sts(0, 0), None, T0))
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "ScaledToZero")


def test_transition_time_kept_while_status_unchanged() -> None:
    first = compute_status(OWNER, SPEC, sts(3, 3), None, T0)
    later = T0 + timedelta(minutes=5)
    second = compute_status(OWNER, SPEC, sts(3, 3), first, later)
    assert conditions(second)["Ready"]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    third = compute_status(OWNER, SPEC, sts(3, 1), second, later)
    assert conditions(third)["Ready"]["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    assert conditions(third)["Degraded"]["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_status_changed_detects_only_real_changes() -> None:
    first = compute_status(OWNER, SPEC, sts(3, 3), None, T0)
    stored = {k: v for k, v in first.items() if v is not None}
    again = compute_status(OWNER, SPEC, sts(3, 3), stored, T0 + timedelta(hours=1))
    assert not status_changed(again, stored)
    assert status_changed(compute_status(OWNER, SPEC, sts(3, 2), stored, T0), stored)
    assert status_changed({"queueDepth": None}, {"queueDepth": 3})
    assert not status_changed({"queueDepth": None}, {})


def test_ports_summary() -> None:
    assert ports_summary(parse_spec({})) == "2525"


def test_an_ephemeral_spool_is_a_standing_warning() -> None:
    persistent = conditions(compute_status(OWNER, SPEC, sts(3, 3), None, T0))["SpoolPersistent"]
    assert (persistent["status"], persistent["reason"]) == ("True", "PersistentVolumeClaim")
    ephemeral_spec = parse_spec({**SPEC.model_dump(by_alias=True), "queue": {"ephemeral": True}})
    status = compute_status(OWNER, ephemeral_spec, sts(3, 3), None, T0)
    warning = conditions(status)["SpoolPersistent"]
    assert (warning["status"], warning["reason"]) == ("False", "EphemeralSpool")
    assert "spec.queue.ephemeral" in warning["message"] and "loses its mail" in warning["message"]
    assert status["phase"] == "Ready", "a warning, not a failure: the fleet serves"


def test_the_queue_judges_degraded_and_a_refresh_between_samples_keeps_it() -> None:
    backlog = {"depth": 40, "podsReporting": 2, "podsUnreachable": 1, "unreachable": ["outbound-2: timeout"],
               "oldestAgeSeconds": 7200, "ratesPerMinute": {"delivered": 0, "deliveryFailures": 12.5}}  # fmt: skip
    status = compute_status(OWNER, SPEC, sts(3, 3), None, T0, queue=backlog)
    degraded = conditions(status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "QueueBacklog")
    assert "7200 s" in degraded["message"] and "spec.queue.backlogAge (1h)" in degraded["message"]
    assert "deliveries fail on every reporting pod (12.5/min" in degraded["message"]
    assert status["queueDepth"] == 40 and status["phase"] == "Degraded"
    # a refresh without new figures (a StatefulSet event) keeps the last ones and their verdict
    later = compute_status(OWNER, SPEC, sts(3, 3), status, T0 + timedelta(seconds=5))
    assert "queue" not in later and "queueDepth" not in later, "left as they are"
    assert conditions(later)["Degraded"]["reason"] == "QueueBacklog"
    healed = {**backlog, "oldestAgeSeconds": 20, "ratesPerMinute": {"delivered": 30, "deliveryFailures": 1}}
    assert conditions(compute_status(OWNER, SPEC, sts(3, 3), status, T0, queue=healed))["Degraded"]["status"] == "False"
    nobody = {"podsReporting": 0, "podsUnreachable": 3, "unreachable": ["a: x", "b: x", "c: x"]}
    silent = compute_status(OWNER, SPEC, sts(3, 3), status, T0, queue=nobody)
    assert silent["queueDepth"] is None, "no pod answered: the column is cleared, not guessed"


def test_config_applied_once_every_reporting_pod_runs_the_rendered_config() -> None:
    unknown = conditions(compute_status(OWNER, SPEC, sts(3, 3), None, T0, config_digest="abc"))["ConfigApplied"]
    assert (unknown["status"], unknown["reason"]) == ("Unknown", "NotReported")
    mixed = {"podsReporting": 2, "configDigests": {"abc": ["outbound-0"], "old": ["outbound-1"]}}
    status = compute_status(OWNER, SPEC, sts(3, 3), None, T0, queue=mixed, config_digest="abc")
    pending = conditions(status)["ConfigApplied"]
    assert (pending["status"], pending["reason"]) == ("False", "Pending") and "outbound-1 still run" in pending[
        "message"
    ]
    assert status["configDigest"] == "abc"
    caught_up = {"podsReporting": 2, "configDigests": {"abc": ["outbound-0", "outbound-1"]}}
    applied = conditions(compute_status(OWNER, SPEC, sts(3, 3), status, T0, queue=caught_up))["ConfigApplied"]
    assert (applied["status"], applied["message"]) == ("True", "the 2 reporting pods run the current config")
