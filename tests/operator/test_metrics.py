"""The operator's metrics without kopf running: what is kept of a status, the counts by condition, the gauges a
scrape computes from the book, and the handlers' decorator (results, error types, kopf's ids unchanged)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._core.intents.registries import get_callable_id
from prometheus_client import CollectorRegistry

from relay_operator import handlers
from relay_operator.handlers.observe import instrumented
from relay_operator.kube import ApiError
from relay_operator.metrics import Condition, OperatorMetrics, condition_counts, object_state
from relay_operator.settings import Settings


def relay(name: str, conditions: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "mail"}, "status": {"conditions": conditions, **status}}


def got(registry: CollectorRegistry, metric: str, /, **labels: str) -> float:
    """One sample's value, 0.0 when it does not exist (its labels may include `name`)."""
    return registry.get_sample_value(metric, labels) or 0.0


READY = {"type": "Ready", "status": "True", "reason": "AllReplicasReady"}
BACKLOG = {"type": "Degraded", "status": "True", "reason": "QueueBacklog"}


def test_a_status_keeps_conditions_replicas_and_the_queue_the_pods_reported() -> None:
    queue = {"podsReporting": 2, "podsUnreachable": 1, "depth": 40, "oldestAgeSeconds": 900}
    state = object_state("SmtpRelay", relay("a", [READY, BACKLOG], replicas=3, readyReplicas=2, queue=queue))
    assert (state.namespace, state.name) == ("mail", "a")
    assert state.conditions == (Condition("Ready", "True", "AllReplicasReady"), Condition("Degraded", "True",
                                                                                          "QueueBacklog"))  # fmt: skip
    assert (state.replicas, state.ready_replicas) == (3, 2)
    assert (state.queue_depth, state.oldest_age_seconds, state.pods_unreachable) == (40, 900, 1)
    silent = object_state("SmtpRelay", relay("b", [], queue={"podsReporting": 0, "podsUnreachable": 2, "depth": 7}))
    assert silent.queue_depth is None and silent.oldest_age_seconds is None, "no pod answered: no figure, not 0"
    odd = object_state("SmtpRelay", relay("c", [{"type": "Ready", "status": "maybe"}, {"status": "True"}]))
    assert odd.conditions == (Condition("Ready", "Unknown", ""),), "a status outside True/False is Unknown"
    bare = object_state("SendingDomain", {"metadata": {"name": "d"}})
    assert (bare.namespace, bare.conditions, bare.verified) == ("default", (), None)


def test_counts_by_condition_count_a_missing_condition_as_unknown() -> None:
    states = [
        object_state("SmtpRelay", relay("a", [READY, BACKLOG])),
        object_state("SmtpRelay", relay("b", [{**READY, "status": "False"}])),
        object_state("SmtpRelay", relay("c", [])),
        object_state("SendingDomain", relay("d", [READY])),
    ]
    counts = condition_counts(states, "SmtpRelay")
    assert (counts["Ready", "True"], counts["Ready", "False"], counts["Ready", "Unknown"]) == (1, 1, 1)
    assert (counts["Degraded", "True"], counts["Degraded", "False"], counts["Degraded", "Unknown"]) == (1, 0, 2)
    assert condition_counts([], "SendingDomain") == {("Ready", "True"): 0, ("Ready", "False"): 0,
                                                     ("Ready", "Unknown"): 0}  # fmt: skip


def test_a_scrape_reports_the_book_and_forgets_deleted_objects() -> None:
    metrics = OperatorMetrics()
    r = metrics.registry
    queue = {"podsReporting": 1, "podsUnreachable": 0, "depth": 12, "oldestAgeSeconds": 30}
    metrics.book.seen("SmtpRelay", relay("a", [READY, BACKLOG], replicas=2, readyReplicas=1, queue=queue))
    metrics.book.seen("SendingDomain", {**relay("d", [READY]), "status": {"conditions": [READY],
                                                                          "verifiedForSending": True}})  # fmt: skip
    assert got(r, "relayfleet_operator_objects", kind="SmtpRelay") == 1
    assert got(r, "relayfleet_operator_objects_by_condition", kind="SmtpRelay", condition="Degraded",
                  status="True") == 1  # fmt: skip
    assert got(r, "relayfleet_operator_condition", kind="SmtpRelay", namespace="mail", name="a",
                  condition="Degraded", status="True", reason="QueueBacklog") == 1  # fmt: skip
    assert got(r, "relayfleet_operator_relay_queue_depth", namespace="mail", name="a") == 12
    assert got(r, "relayfleet_operator_relay_queue_oldest_age_seconds", namespace="mail", name="a") == 30
    assert got(r, "relayfleet_operator_relay_ready_replicas", namespace="mail", name="a") == 1
    assert got(r, "relayfleet_operator_domain_verified", namespace="mail", name="d") == 1
    # the same relay seen again, healed: its old reason's series is gone, not left at 1
    metrics.book.seen("SmtpRelay", relay("a", [READY, {"type": "Degraded", "status": "False", "reason": "AsExpected"}]))
    assert r.get_sample_value("relayfleet_operator_condition", {"kind": "SmtpRelay", "namespace": "mail",
        "name": "a", "condition": "Degraded", "status": "True", "reason": "QueueBacklog"}) is None  # fmt: skip
    assert r.get_sample_value("relayfleet_operator_relay_queue_depth", {"namespace": "mail", "name": "a"}) is None
    metrics.book.gone("SmtpRelay", "mail", "a")
    assert got(r, "relayfleet_operator_objects", kind="SmtpRelay") == 0
    assert got(r, "relayfleet_operator_objects_by_condition", kind="SmtpRelay", condition="Ready", status="True") == 0
    assert got(r, "relayfleet_operator_objects", kind="SendingDomain") == 1


def test_observe_refuses_an_unknown_result() -> None:
    with pytest.raises(ValueError, match="result must be one of success, retry, error"):
        OperatorMetrics().observe("SmtpRelay", "relay_changed", "ok", 0.1)


async def test_the_decorator_counts_results_and_error_types_and_keeps_kopfs_id() -> None:
    metrics = OperatorMetrics()
    r = metrics.registry
    outcomes: list[BaseException | None] = [None]

    async def relay_changed(**_: Any) -> str:
        await asyncio.sleep(0.01)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "done"

    counted = instrumented(metrics, "SmtpRelay")(relay_changed)
    assert get_callable_id(counted) == get_callable_id(relay_changed), "kopf's handler id is unchanged"
    assert await counted(body={}) == "done"
    run = {"kind": "SmtpRelay", "handler": "relay_changed"}
    assert got(r, "relayfleet_operator_reconciles_total", **run, result="success") == 1
    assert got(r, "relayfleet_operator_reconcile_duration_seconds_sum", **run) >= 0.01

    conflict = kopf.TemporaryError("conflict", delay=2)
    conflict.__cause__ = ApiError(409, "the object has been modified")
    outcomes[:] = [kopf.TemporaryError("draining", delay=5), conflict, RuntimeError("bug"), asyncio.CancelledError()]
    for expected in (kopf.TemporaryError, kopf.TemporaryError, RuntimeError, asyncio.CancelledError):
        with pytest.raises(expected):
            await counted()
    assert got(r, "relayfleet_operator_reconciles_total", **run, result="retry") == 2
    assert got(r, "relayfleet_operator_reconciles_total", **run, result="error") == 1
    assert got(r, "relayfleet_operator_reconcile_errors_total", **run, error="ApiError") == 1, "a conflict's retry"
    assert got(r, "relayfleet_operator_reconcile_errors_total", **run, error="RuntimeError") == 1
    assert got(r, "relayfleet_operator_reconcile_errors_total", **run, error="TemporaryError") == 0, "waiting"
    assert got(r, "relayfleet_operator_reconcile_duration_seconds_count", **run) == 4, "a cancelled run is not"


def test_metrics_settings_from_the_environment() -> None:
    assert (Settings().metrics_enabled, Settings().metrics_port, Settings().metrics_host) == (True, 8081, "0.0.0.0")
    env = {"RELAYFLEET_METRICS_PORT": "9102", "RELAYFLEET_METRICS_ENABLED": "false", "RELAYFLEET_METRICS_HOST": "::"}
    assert Settings.from_env(env) == Settings(metrics_port=9102, metrics_enabled=False, metrics_host="::")
    with pytest.raises(ValueError, match=r"RELAYFLEET_METRICS_PORT must be a port number \(0-65535\), not 70000"):
        Settings.from_env({"RELAYFLEET_METRICS_PORT": "70000"})
    with pytest.raises(ValueError, match="RELAYFLEET_METRICS_PORT: invalid literal"):
        Settings.from_env({"RELAYFLEET_METRICS_PORT": "http"})


def test_a_registry_serves_metrics_only_when_asked() -> None:
    """The module's registry (relayfleet-operator) serves; a test's registry gets no port and no extra watches."""
    quiet, served = kopf.OperatorRegistry(), kopf.OperatorRegistry()
    assert handlers.register(quiet, Settings()) is None
    endpoint = handlers.register(served := kopf.OperatorRegistry(), Settings(metrics_port=9102), serve_metrics=True)
    assert endpoint is not None and endpoint.port == 9102
    ids = {h.id for h in served._activities.get_all_handlers()} - {h.id for h in quiet._activities.get_all_handlers()}
    assert ids == {"serve_metrics", "stop_metrics"}
    watches = {h.id for h in served._watching.get_all_handlers()} - {h.id for h in quiet._watching.get_all_handlers()}
    assert watches == {"smtprelay_seen_for_metrics", "sendingdomain_seen_for_metrics"}
    assert handlers.SETTINGS.metrics_enabled, "relayfleet-operator serves /metrics by default"


async def test_a_scrape_of_a_large_fleet_does_not_hold_up_the_event_loop() -> None:
    """Formatting thousands of samples takes a while: it runs in a thread, the handlers' loop keeps turning."""
    import aiohttp

    from relay_operator.handlers.observe import MetricsEndpoint

    metrics = OperatorMetrics()
    for i in range(2000):
        metrics.book.seen("SmtpRelay", relay(f"r{i}", [READY, BACKLOG], replicas=3, readyReplicas=3))
    endpoint = MetricsEndpoint(metrics, "127.0.0.1", 0)
    await endpoint.start()
    gaps: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.002)
            gaps.append(loop.time() - before)

    ticking = asyncio.ensure_future(ticker())
    try:
        async with aiohttp.ClientSession() as session:
            started = asyncio.get_running_loop().time()
            async with session.get(f"http://127.0.0.1:{endpoint.port}/metrics") as response:
                text = await response.text()
            took = asyncio.get_running_loop().time() - started
    finally:
        ticking.cancel()
        await endpoint.stop()
    assert sum(line.startswith("relayfleet_operator_condition{") for line in text.splitlines()) == 4000
    assert len(gaps) > 5 and max(gaps) < took / 2, (max(gaps), took)
