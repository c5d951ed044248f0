"""`smtp-relay run --workers N`: a supervisor and N relay processes sharing the SMTP port, end to end.

Real processes, real signals: the supervisor is the relay_factory's child; its workers are found
through its /queue (`workers[].pid`).
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bench.peers.ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.relay.process.test_relay_process import _send, _smarthost_spec, _subject

pytestmark = pytest.mark.peers


def _send_many(port: int, subjects: list[str]) -> None:
    """One connection per message, four clients at a time (the kernel spreads connections over workers)."""
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: _send(port, s), subjects))


def _workers(relay: RelayProcess) -> list[dict[str, Any]]:
    return list(relay.queue()["workers"])


def _metrics(relay: RelayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = relay.http("/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _delivered(sink: Any) -> set[str]:
    return {_subject(m.data) for m in sink.messages()}


def test_two_workers_deliver_everything_and_merge_metrics(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), args=["--workers", "2"])
    workers = _workers(relay)
    assert [w["name"] for w in workers] == ["0", "1"]
    assert relay.proc is not None
    assert len({w["pid"] for w in workers} | {relay.proc.pid}) == 3, "two worker processes besides the supervisor"
    subjects = [f"many-{i}" for i in range(60)]
    _send_many(port, subjects)
    sink.wait_for(60, timeout=30)
    assert _delivered(sink) == set(subjects)

    status, text = relay.http("/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(text))  # valid exposition, or this raises
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "one HELP/TYPE per family"
    assert text.count("# TYPE smtp_relay_received_messages_total ") == 1
    samples = _metrics(relay)
    assert samples[("smtp_relay_received_messages_total", ())] == 60
    wait_for(
        lambda: _metrics(relay)[("smtp_relay_delivered_recipients_total", (("route", "smarthosts"),))] == 60, timeout=10
    )
    assert samples[("smtp_relay_spool_commit_seconds_count", ())] == 60
    assert samples[("smtp_relay_spool_commit_seconds_bucket", (("le", "+Inf"),))] == 60
    assert samples[("smtp_relay_draining", ())] == 0
    assert relay.http("/livez")[0] == 200
    assert relay.http("/readyz")[0] == 200
    queue = relay.queue()
    assert queue["ready"] is True and queue["queue"]["total"] == 0


def test_drain_refuses_new_connections_on_every_worker(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), args=["--workers", "2"])
    _send(port, "before-drain")
    status, body = relay.http("/drain", method="POST")
    assert status == 200
    answer = json.loads(body)
    assert answer["draining"] is True and "total" in answer["queue"]
    assert relay.http("/readyz")[0] == 503
    assert relay.http("/livez")[0] == 200
    for _ in range(8):  # new connections land on either worker: all refuse
        with smtplib.SMTP(timeout=10) as client:
            code, _ = client.connect("127.0.0.1", port)
            assert code == 421
    assert _metrics(relay)[("smtp_relay_draining", ())] == 1
    sink.wait_for(1, timeout=10)


def test_sigterm_exits_zero_and_a_restart_delivers_the_rest(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), args=["--workers", "2"], grace=2.0)
    subjects = [f"term-{i}" for i in range(20)]
    _send_many(port, subjects)
    assert relay.queue()["queue"]["total"] == 20
    pids = [w["pid"] for w in _workers(relay)]
    assert relay.terminate(timeout=30) == 0
    for pid in pids:  # the supervisor waited for its workers (and reaped them)
        assert not os.path.exists(f"/proc/{pid}")
    sink.start()
    relay.start()
    sink.wait_for(20, timeout=30)
    assert set(subjects) <= _delivered(sink)


def test_a_killed_worker_is_restarted_and_its_mail_delivered(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), args=["--workers", "2"])
    subjects = [f"kill-{i}" for i in range(30)]
    _send_many(port, subjects)
    victim = max(_workers(relay), key=lambda w: w["queue"]["total"])
    assert victim["queue"]["total"] > 0
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> bool:
        now = next(w for w in _workers(relay) if w["name"] == victim["name"])
        return bool(now["ready"] and now["pid"] != victim["pid"])

    wait_for(restarted, timeout=20)
    assert relay.http("/readyz")[0] == 200
    assert relay.queue()["queue"]["total"] == 30, "the restarted worker recovered its spool"
    assert _metrics(relay)[("smtp_relay_worker_restarts_total", (("worker", victim["name"]),))] == 1
    sink.start()
    sink.wait_for(30, timeout=30)
    assert set(subjects) <= _delivered(sink)


def test_spool_of_a_removed_worker_is_drained(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), args=["--workers", "3"], grace=1.0)
    subjects: list[str] = []
    while not any(w["name"] == "2" and w["queue"]["total"] for w in _workers(relay)):
        batch = [f"orphan-{len(subjects) + i}" for i in range(10)]
        _send_many(port, batch)
        subjects += batch
        assert len(subjects) < 200, "the kernel never gave worker 2 a connection"
    assert relay.terminate(timeout=30) == 0
    assert any((relay.spool / "worker-2" / "queue").glob("seg-*.dat"))

    relay.extra_args[relay.extra_args.index("3")] = "2"
    sink.start()
    relay.start()
    assert [w["name"] for w in _workers(relay)] == ["0", "1", "drain-worker-2"]
    sink.wait_for(len(subjects), timeout=30)
    assert set(subjects) <= _delivered(sink)
    wait_for(lambda: "drain-worker-2 delivered everything" in relay.log.read_text(), timeout=10)
    assert relay.http("/readyz")[0] == 200
    assert relay.terminate(timeout=30) == 0


def test_switching_between_one_and_two_workers_strands_nothing(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), grace=1.0)  # --workers 1: the plain single process
    assert "workers" not in relay.queue()
    single = [f"single-{i}" for i in range(5)]
    _send_many(port, single)
    assert relay.terminate(timeout=30) == 0
    assert any((relay.spool / "queue").glob("seg-*.dat"))

    relay.extra_args += ["--workers", "2"]  # SPOOL's own queue gets a deliver-only worker
    relay.start()
    assert [w["name"] for w in _workers(relay)] == ["0", "1", "drain-spool"]
    double = [f"double-{i}" for i in range(10)]
    _send_many(port, double)
    assert relay.terminate(timeout=30) == 0

    relay.extra_args[-1] = "1"  # back to one: the worker-<i> spools get deliver-only workers
    sink.start()
    relay.start()
    assert [w["name"] for w in _workers(relay)] == ["0", "drain-worker-0", "drain-worker-1"]
    sink.wait_for(15, timeout=30)
    assert set(single + double) <= _delivered(sink)
    wait_for(lambda: all(w["finished"] for w in _workers(relay) if not w["listen"]), timeout=10)
    assert relay.terminate(timeout=30) == 0
