"""status.queue from the pods' answers: sums, oldest, the unreachable named, rates from two samples."""

from __future__ import annotations

from relay_operator.fleet.queue_status import PodSample, summarize


def figures(active: int, deferred: int, oldest: float, received: int, delivered: int, **extra: int) -> dict[str, int]:
    return {"active": active, "deferred": deferred, "oldest_active_age": oldest / 2, "oldest_deferred_age": oldest,
            "received_total": received, "delivered_total": delivered, "delivery_failures_total": 0,
            "bounced_total": 0, "rejected_total": 0, "quarantined": 1, **extra}  # fmt: skip


def test_sums_over_the_pods_that_answered_and_names_the_others() -> None:
    samples = [
        PodSample("r-0", "u0", 100.0, figures(2, 3, 50, 10, 5), config_digest="new"),
        PodSample("r-1", "u1", 100.0, figures(1, 0, 90, 4, 4), config_digest="old"),
        PodSample("r-2", "u2", 100.0, error="ClientConnectorError"),
    ]
    queue, keep = summarize(samples, {})
    assert queue == {
        "podsReporting": 2,
        "podsUnreachable": 1,
        "unreachable": ["r-2: ClientConnectorError"],
        "depth": 6,
        "active": 3,
        "deferred": 3,
        "quarantined": 2,
        "oldestAgeSeconds": 90,
        "configDigests": {"new": ["r-0"], "old": ["r-1"]},
    }
    assert set(keep) == {"u0", "u1"} and "ratesPerMinute" not in queue, "one sample gives no rate"


def test_rates_per_minute_from_two_samples_and_a_restarted_pod_gives_none() -> None:
    first, _ = summarize([], {})
    assert first == {"podsReporting": 0, "podsUnreachable": 0, "unreachable": []}
    before = {"u0": PodSample("r-0", "u0", 0.0, figures(0, 0, 0, 100, 90)),
              "u1": PodSample("r-1", "u1", 0.0, figures(0, 0, 0, 500, 500))}  # fmt: skip
    now = [PodSample("r-0", "u0", 30.0, figures(0, 0, 0, 160, 120, delivery_failures_total=3)),
           PodSample("r-1", "u1", 30.0, figures(0, 0, 0, 2, 2))]  # r-1 restarted: its counters began again  # fmt: skip
    queue, _ = summarize(now, before)
    assert queue["ratesPerMinute"] == {"received": 120.0, "delivered": 60.0, "deliveryFailures": 6.0, "bounced": 0.0,
                                       "rejected": 0.0}  # fmt: skip
