"""Scale-down without stranding mail: which replicas the StatefulSet may have while pods drain. Pure.

When an SmtpRelay asks for fewer replicas than its StatefulSet runs (a spec edit, `kubectl scale`, an
autoscaler), the pods that will go are the highest ordinals. The operator drains them first (`POST /drain`: they
stop accepting, so they leave the Service endpoints, and keep delivering) and lowers the StatefulSet's replicas
only once every one of them reports an empty spool and no SMTP session open (a transaction that began before
the drain may still commit a message after the answer; a session ends at its next MAIL with 421). A pod that
does not answer is not known to be empty, so it is waited for too. The leaving pods hand their queue off to the
staying pods that are Ready (drain.py names them), so a drain does not wait for the upstream; a drain that outlasts
`spec.queue.drainTimeout` is reported (Degraded, DrainStuck) and the pod is kept, never removed with mail in it.
Scaling up again undrains the pods that stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from relay_operator.conditions import timestamp
from relay_operator.relays.status import DrainReport


@dataclass(frozen=True)
class LeavingPod:
    """A pod above the desired ordinals, as it answered (`queued` None: it did not answer)."""

    name: str
    queued: int | None
    error: str = ""
    sessions: int = 0
    """SMTP sessions still open: a transaction in flight may still commit a message, so the pod is not empty."""
    handed_off: int = 0
    """Messages it has handed to the pods that stay so far."""

    @property
    def empty(self) -> bool:
        return self.queued == 0 and self.sessions == 0

    def waiting(self) -> str:
        """What the status says the drain waits for on this pod."""
        if self.queued is None:
            return f"{self.name} (no answer: {self.error})"
        open_sessions = f", {self.sessions} SMTP session(s) open" if self.sessions else ""
        handed = f", {self.handed_off} handed off" if self.handed_off else ""
        return f"{self.name} ({self.queued} queued{handed}{open_sessions})"


@dataclass(frozen=True)
class Plan:
    replicas: int
    """What the StatefulSet gets now."""
    drain: dict[str, Any] | None = None
    """status.drain while a drain is under way (None: clear it)."""
    progress: str = ""
    """Progressing's message while draining."""
    stuck: str = ""
    """Degraded's message once the drain outlasted its deadline."""
    leaving: list[str] = field(default_factory=list)
    handed_off: int = 0
    """Messages the leaving pods have handed to the staying ones so far (their answers' sum)."""

    def report(self) -> DrainReport:
        """What the SmtpRelay's status says of it (no drain: status.drain cleared)."""
        return DrainReport(self.drain, self.progress, self.stuck)


def answered(name: str, body: Any, error: str) -> LeavingPod:
    """A leaving pod as its `POST /drain` answered (`body` None with `error`: it did not).

    Only a number is a queue figure; a relay whose workers did not all answer (`unanswered`: one restarting)
    has a spool nobody counted, so it is not known to be empty either.
    """
    answer: dict[str, Any] = body if isinstance(body, dict) else {}
    queue: dict[str, Any] = answer["queue"] if isinstance(answer.get("queue"), dict) else {}
    total, handed, sessions = queue.get("total"), queue.get("handed_off_total"), answer.get("sessions")
    queued = int(total) if isinstance(total, int | float) else None
    silent = answer.get("unanswered")
    if silent and isinstance(silent, list):
        queued, error = None, f"worker(s) {', '.join(map(str, silent))} of the pod did not answer"
    return LeavingPod(
        name,
        queued,
        error,
        int(sessions) if isinstance(sessions, int) else 0,
        int(handed) if isinstance(handed, int | float) else 0,
    )


def leaving_ordinals(name: str, desired: int, current: int) -> list[str]:
    """The pods that go when `current` replicas become `desired`: the highest ordinals."""
    return [f"{name}-{i}" for i in range(desired, current)]


def plan(
    desired: int,
    current: int,
    leaving: Sequence[LeavingPod],
    previous: Mapping[str, Any] | None,
    now: datetime,
    timeout: timedelta,
    peers: int | None = 0,
) -> Plan:
    """Replicas for the StatefulSet: `desired` when not shrinking or every leaving pod is empty, else `current`.
    `peers`: the staying pods the leaving ones hand their queue off to (0: none is Ready; None: hand-off off)."""
    if desired >= current:
        return Plan(replicas=desired)
    names = [p.name for p in leaving]
    handed = sum(p.handed_off for p in leaving)
    if all(p.empty for p in leaving):
        return Plan(replicas=desired, leaving=names, handed_off=handed)
    since_text = (previous or {}).get("since") if (previous or {}).get("targetReplicas") == desired else None
    since = datetime.fromisoformat(str(since_text).replace("Z", "+00:00")) if since_text else now
    waiting = [p.waiting() for p in leaving if not p.empty]
    drain = {"targetReplicas": desired, "since": timestamp(since), "waitingFor": waiting}
    how = f"handing off to {peers} staying pod(s)" if peers else "no staying pod is Ready to take a hand-off"
    if peers is None:
        how = "spec.queue.handoff is off: the pods deliver their mail themselves"
    progress = f"draining before scaling from {current} to {desired} ({how}): waiting for {', '.join(waiting)}"
    stuck = ""
    if now - since > timeout:
        stuck = (
            f"the drain from {current} to {desired} replicas has not finished since {timestamp(since)}"
            f" (spec.queue.drainTimeout): {', '.join(waiting)}; the pods are kept with their mail"
        )
    return Plan(replicas=current, drain=drain, progress=progress, stuck=stuck, leaving=names, handed_off=handed)


def drain_event(previous: Mapping[str, Any] | None, result: Plan, current: int) -> tuple[str, str] | None:
    """The Event (reason, message) a step of a scale-down deserves: when its drain starts (no drain in the status
    yet) and when it ends (the status had one, the plan shrinks); None in between (the status says the rest)."""
    if result.drain is not None and not previous:
        return "Draining", f"{result.progress}"
    if result.drain is None and previous and result.leaving:
        handed = f"; {result.handed_off} message(s) handed off to the pods that stay" if result.handed_off else ""
        return "Drained", f"{', '.join(result.leaving)} empty: scaling from {current} to {result.replicas}{handed}"
    return None
