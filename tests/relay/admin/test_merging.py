"""The fleet's figures from its workers': merged Prometheus expositions and summed queues (pure)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from smtp_relay.admin.merging import merge_metrics, merge_queues

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _worker(received: int, oldest: float, draining: int, latencies: list[float]) -> str:
    """One worker's exposition, written by prometheus_client as a worker's /metrics is."""
    registry = CollectorRegistry()
    counter = Counter("smtp_relay_received_messages", "Messages accepted.", registry=registry)
    counter.inc(received)
    by_route = Counter("smtp_relay_delivered_recipients", "Recipients delivered.", ["route"], registry=registry)
    by_route.labels(route="smarthosts").inc(received)
    Gauge("smtp_relay_queue_oldest_deferred_seconds", "Age of the oldest.", registry=registry).set(oldest)
    Gauge("smtp_relay_draining", "1 while draining.", registry=registry).set(draining)
    Gauge("smtp_relay_queue_messages", "Messages queued.", registry=registry).set(received)
    histogram = Histogram("smtp_relay_spool_commit_seconds", "Commit latency.", buckets=(0.01, 0.1), registry=registry)
    for latency in latencies:
        histogram.observe(latency)
    return generate_latest(registry).decode()


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_histograms_and_gauges_add_up() -> None:
    merged = merge_metrics([_worker(3, 1.0, 0, [0.005, 0.05]), _worker(4, 2.0, 0, [0.5])]).decode()
    samples = _samples(merged)
    assert samples[("smtp_relay_received_messages_total", ())] == 7
    assert samples[("smtp_relay_delivered_recipients_total", (("route", "smarthosts"),))] == 7
    assert samples[("smtp_relay_queue_messages", ())] == 7
    assert samples[("smtp_relay_spool_commit_seconds_count", ())] == 3
    assert samples[("smtp_relay_spool_commit_seconds_bucket", (("le", "0.01"),))] == 1
    assert samples[("smtp_relay_spool_commit_seconds_bucket", (("le", "0.1"),))] == 2
    assert samples[("smtp_relay_spool_commit_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("smtp_relay_spool_commit_seconds_sum", ())] == pytest.approx(0.555)


def test_oldest_ages_and_draining_take_the_maximum_created_the_minimum() -> None:
    first, second = _worker(1, 5.0, 0, []), _worker(1, 2.0, 1, [])
    created = [_samples(t)[("smtp_relay_received_messages_created", ())] for t in (first, second)]
    samples = _samples(merge_metrics([first, second]).decode())
    assert samples[("smtp_relay_queue_oldest_deferred_seconds", ())] == 5.0
    assert samples[("smtp_relay_draining", ())] == 1
    assert samples[("smtp_relay_received_messages_created", ())] == min(created)


def test_one_help_and_type_per_family_with_buckets_in_order() -> None:
    merged = merge_metrics([_worker(1, 0.0, 0, [0.05]), _worker(2, 0.0, 0, [0.05])]).decode()
    assert merged.count("# TYPE smtp_relay_received_messages_total ") == 1
    assert merged.count("# HELP smtp_relay_received_messages_total ") == 1
    buckets = [line.split('le="')[1].split('"')[0] for line in merged.splitlines() if "_bucket{" in line]
    assert buckets == ["0.01", "0.1", "+Inf"]


def test_a_family_of_another_type_elsewhere_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    as_gauge, as_counter = CollectorRegistry(), CollectorRegistry()
    Gauge("smtp_relay_x", "X.", registry=as_gauge).set(5)
    Counter("smtp_relay_x", "X.", registry=as_counter).inc(7)
    with caplog.at_level(logging.WARNING):
        samples = _samples(
            merge_metrics([generate_latest(as_gauge).decode(), generate_latest(as_counter).decode()]).decode()
        )
    assert samples[("smtp_relay_x", ())] == 5.0
    assert ("smtp_relay_x_total", ()) not in samples
    assert "smtp_relay_x is a counter here but a gauge elsewhere" in caplog.text


def test_no_worker_answered_gives_an_empty_exposition() -> None:
    assert merge_metrics([]) == b""


def test_queues_add_up_and_oldest_ages_take_the_maximum() -> None:
    merged = merge_queues(
        [
            {"active": 1, "deferred": 2, "oldest_active_age": 3.0, "oldest_deferred_age": 10.0, "total": 3},
            {"active": 4, "deferred": 0, "oldest_active_age": 7.5, "oldest_deferred_age": 0.0, "total": 4},
        ]
    )
    assert merged == {"active": 5, "deferred": 2, "oldest_active_age": 7.5, "oldest_deferred_age": 10.0, "total": 7}


def test_queue_figures_that_are_not_numbers_are_left_out() -> None:
    merged = merge_queues([{"total": 1, "ready": True, "note": "x"}, {"total": 2, "ready": False, "queue": {}}])
    assert merged == {"total": 3}
    assert merge_queues([]) == {}
