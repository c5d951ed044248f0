"""The event recorder: warnings at once, Normal events one per reason when the block ends."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from relay_operator.events import recorder

BODY = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": "outbound"}}
Posted = list[tuple[str, str, str]]


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> Posted:
    """What would have gone to kopf's poster: (type, reason, message)."""
    seen: Posted = []

    def event(body: Any, *, type: str, reason: str, message: str = "") -> None:
        assert body is BODY
        seen.append((type, reason, message))

    def warn(body: Any, *, reason: str, message: str = "") -> None:
        event(body, type="Warning", reason=reason, message=message)

    monkeypatch.setattr(kopf, "event", event)
    monkeypatch.setattr(kopf, "warn", warn)
    return seen


def test_normal_events_are_posted_on_exit_one_per_reason(posted: Posted) -> None:
    with recorder(BODY) as events:
        events.info("Created", "ConfigMap/outbound-config created")
        events.warn("ApplyFailed", "Service/outbound: conflict")
        events.info("Patched", "Service/outbound patched")
        events.info("Created", "StatefulSet/outbound created")
        assert posted == [("Warning", "ApplyFailed", "Service/outbound: conflict")], "warnings go out at once"
    assert posted[1:] == [
        ("Normal", "Created", "ConfigMap/outbound-config created; StatefulSet/outbound created"),
        ("Normal", "Patched", "Service/outbound patched"),
    ]


def test_events_are_flushed_when_the_block_raises(posted: Posted) -> None:
    with pytest.raises(RuntimeError), recorder(BODY) as events:
        events.info("Created", "ConfigMap/outbound-config created")
        raise RuntimeError("the API went away")
    assert posted == [("Normal", "Created", "ConfigMap/outbound-config created")]


def test_a_flushed_recorder_posts_nothing_twice(posted: Posted) -> None:
    with recorder(BODY) as events:
        events.info("ClaimsDeleted", "deleted spool PVCs spool-outbound-0")
        events.flush()
    assert posted == [("Normal", "ClaimsDeleted", "deleted spool PVCs spool-outbound-0")]
    with recorder(BODY):
        pass
    assert len(posted) == 1, "an empty recorder posts nothing"
