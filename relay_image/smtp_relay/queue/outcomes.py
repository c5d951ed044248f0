"""What one delivery attempt's outcomes mean for the message: pure, so the scheduler only applies them.

Recipients are sorted into settled, failed for good, failed temporarily and held by traffic shaping; the next
attempt follows the retry schedule for temporary failures and the shaper's `not_before` for held ones, never
beyond the message's maxAge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smtp_relay.model.envelope import Outcome, OutcomeKind
from smtp_relay.queue.backoff import next_delay


@dataclass
class SortedOutcomes:
    settled: list[str] = field(default_factory=list)
    failures: dict[str, Outcome] = field(default_factory=dict)
    temporary: dict[str, Outcome] = field(default_factory=dict)
    shaped: dict[str, Outcome] = field(default_factory=dict)

    @property
    def counts_as_attempt(self) -> bool:
        """Held back by shaping alone is no attempt: the retry schedule stays where it was."""
        return bool(self.temporary) or not self.shaped


def sort_outcomes(recipients: Sequence[str], outcomes: Mapping[str, Outcome]) -> SortedOutcomes:
    result = SortedOutcomes()
    for rcpt in recipients:
        outcome = outcomes.get(rcpt) or Outcome.temporary(0, "delivery reported no outcome for this recipient")
        if outcome.kind is OutcomeKind.DELIVERED:
            result.settled.append(rcpt)  # counted by delivery, which knows the route
        elif outcome.kind is OutcomeKind.PERMANENT:
            result.failures[rcpt] = outcome
        elif outcome.kind is OutcomeKind.SHAPED:
            result.shaped[rcpt] = outcome
        else:
            result.temporary[rcpt] = outcome
    return result


def next_attempt(
    temporary: Mapping[str, Outcome],
    shaped: Mapping[str, Outcome],
    now: float,
    schedule: Sequence[float],
    attempts: int,
    deadline: float,
) -> float:
    """When to try again: the retry schedule's delay, or sooner when shaping frees a recipient; by `deadline`."""
    retry_at = now + next_delay(schedule, attempts) if temporary else float("inf")
    if shaped:
        retry_at = min(retry_at, min(o.not_before for o in shaped.values()))
    return max(min(retry_at, deadline), now)
