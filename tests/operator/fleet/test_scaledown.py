"""The scale-down plan: the StatefulSet shrinks only when every leaving pod reports an empty spool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay_operator.fleet.scaledown import LeavingPod, answered, drain_event, leaving_ordinals, plan

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_the_highest_ordinals_leave() -> None:
    assert leaving_ordinals("r", 1, 3) == ["r-1", "r-2"]
    assert leaving_ordinals("r", 3, 3) == []


def test_not_shrinking_renders_the_desired_replicas() -> None:
    assert plan(3, 2, [], None, T0, HOUR).replicas == 3
    assert plan(2, 2, [], {"targetReplicas": 1, "since": "2026-12-03T07:00:00Z"}, T0, HOUR).drain is None


def test_shrinks_once_every_leaving_pod_is_empty() -> None:
    done = plan(1, 3, [LeavingPod("r-1", 0), LeavingPod("r-2", 0)], None, T0, HOUR)
    assert (done.replicas, done.drain, done.stuck) == (1, None, "")
    assert done.report().status is None, "the status' drain is cleared"


def test_waits_for_mail_and_for_pods_that_do_not_answer() -> None:
    waiting = plan(1, 3, [LeavingPod("r-1", 4), LeavingPod("r-2", None, "timeout")], None, T0, HOUR)
    assert waiting.replicas == 3
    assert waiting.drain == {"targetReplicas": 1, "since": "2026-12-03T08:00:00Z",
                             "waitingFor": ["r-1 (4 queued)", "r-2 (no answer: timeout)"]}  # fmt: skip
    assert "waiting for r-1 (4 queued)" in waiting.progress and not waiting.stuck


def test_a_drain_past_its_deadline_is_reported_and_the_pods_are_kept() -> None:
    first = plan(1, 2, [LeavingPod("r-1", 2)], None, T0, HOUR)
    later = plan(1, 2, [LeavingPod("r-1", 2)], first.drain, T0 + HOUR + timedelta(seconds=1), HOUR)
    assert later.replicas == 2 and later.drain is not None and later.drain["since"] == "2026-12-03T08:00:00Z"
    assert "has not finished since 2026-12-03T08:00:00Z" in later.stuck and "kept with their mail" in later.stuck
    other_target = plan(0, 2, [LeavingPod("r-0", 1), LeavingPod("r-1", 2)], first.drain, T0 + 2 * HOUR, HOUR)
    assert other_target.drain is not None and other_target.drain["since"] == "2026-12-03T10:00:00Z", "a new drain"


def test_an_open_smtp_session_keeps_the_pod_until_it_ends() -> None:
    """A transaction that began before the drain may still commit a message after the pod answered 0 queued."""
    waiting = plan(1, 2, [LeavingPod("r-1", 0, sessions=2)], None, T0, HOUR)
    assert waiting.replicas == 2
    assert waiting.drain is not None and waiting.drain["waitingFor"] == ["r-1 (0 queued, 2 SMTP session(s) open)"]
    assert plan(1, 2, [LeavingPod("r-1", 0, sessions=0)], waiting.drain, T0, HOUR).replicas == 1


def test_the_progress_says_where_the_queue_goes() -> None:
    leaving = [LeavingPod("r-2", 4, handed_off=6)]
    handing = plan(2, 3, leaving, None, T0, HOUR, peers=2)
    assert "(handing off to 2 staying pod(s)): waiting for r-2 (4 queued, 6 handed off)" in handing.progress
    alone = plan(2, 3, leaving, None, T0, HOUR)
    assert "(no staying pod is Ready to take a hand-off)" in alone.progress
    off = plan(2, 3, leaving, None, T0, HOUR, peers=None)
    assert "(spec.queue.handoff is off: the pods deliver their mail themselves)" in off.progress


def test_an_event_when_the_drain_starts_and_when_it_ends() -> None:
    waiting = plan(1, 3, [LeavingPod("r-1", 2), LeavingPod("r-2", 0)], None, T0, HOUR, peers=1)
    reason, message = drain_event(None, waiting, 3) or ("", "")
    assert reason == "Draining" and "handing off to 1 staying pod(s)" in message and "r-1 (2 queued)" in message
    assert waiting.drain is not None
    assert drain_event(waiting.drain, waiting, 3) is None, "no Event for every look while it waits"
    done = plan(1, 3, [LeavingPod("r-1", 0, handed_off=7), LeavingPod("r-2", 0, handed_off=1)], waiting.drain, T0, HOUR)
    assert drain_event(waiting.drain, done, 3) == (
        "Drained",
        "r-1, r-2 empty: scaling from 3 to 1; 8 message(s) handed off to the pods that stay",
    )
    assert drain_event(None, plan(3, 3, [], None, T0, HOUR), 3) is None


def test_a_drain_answer_is_read_as_figures_only_when_every_worker_answered() -> None:
    body = {"draining": True, "queue": {"total": 3, "handed_off_total": 5}, "sessions": 1}
    assert answered("r-1", body, "") == LeavingPod("r-1", 3, "", 1, 5)
    assert answered("r-1", {"queue": {"total": 0}, "sessions": 0}, "").empty
    # a worker restarting under --workers: the sum leaves its spool out, so the pod is waited for
    silent = answered("r-1", {"queue": {"total": 0}, "sessions": 0, "unanswered": ["1"]}, "")
    assert not silent.empty and silent.waiting() == "r-1 (no answer: worker(s) 1 of the pod did not answer)"
    assert answered("r-1", None, "timeout") == LeavingPod("r-1", None, "timeout")
    assert answered("r-1", {"queue": {"total": "3"}}, "").queued is None, "only a number is a figure"
