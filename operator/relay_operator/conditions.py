"""Kubernetes status conditions, timestamps and status merge patches, shared by every controller: pure.

Conditions follow the API convention (`type`, `status`, `reason`, `message`, `lastTransitionTime`,
`observedGeneration`); `lastTransitionTime` moves only when `status` changes, so a condition whose message is
refreshed does not look like a new transition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the apiserver formats metav1.Time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    kind: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """One condition; `status` True/False or the text ("True", "False", "Unknown"); keeps the previous
    lastTransitionTime when the status did not change."""
    text = status if isinstance(status, str) else ("True" if status else "False")
    old = next((c for c in previous if c.get("type") == kind), None)
    changed_at = timestamp(now)
    if old is not None and old.get("status") == text and old.get("lastTransitionTime"):
        changed_at = str(old["lastTransitionTime"])
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": changed_at,
        "observedGeneration": generation,
    }


def status_changed(patch: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Would applying the merge patch `patch` change `current`? (Avoids a write, and an event storm, per resync.)
    A None value removes a field; nested objects are compared as merge patches too."""
    current = current or {}
    for key, value in patch.items():
        if value is None:
            if key in current:
                return True
        elif isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            if status_changed(value, current[key]):
                return True
        elif current.get(key) != value:
            return True
    return False
