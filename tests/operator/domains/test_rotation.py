"""The rotation state machine through every state, on a fake clock and plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay_operator.domains.rotation import (
    ACTIVATED,
    GENERATED,
    REVOKED,
    SAFE_TO_REMOVE,
    DkimState,
    Inputs,
    advance,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def inputs(now: datetime, **kw: object) -> Inputs:
    base: dict[str, object] = {"now": now, "rotate_every": 180 * DAY, "domain": "example.com"}
    return Inputs(**{**base, **kw})  # type: ignore[arg-type]


def reasons(events: list[tuple[str, str]]) -> list[str]:
    return [reason for reason, _ in events]


def test_a_full_rotation_by_period() -> None:
    # no key: S1 pending
    step = advance(DkimState(), inputs(T0))
    assert step.actions == [("generate", "rf202612a")] and reasons(step.events) == [GENERATED]
    assert step.state == DkimState(pending="rf202612a")
    assert "rf202612a._domainkey.example.com" in step.events[0][1]
    # not yet in DNS: nothing happens, however often it is checked
    assert advance(step.state, inputs(T0 + DAY)).state == step.state
    # S1 verified: active
    step = advance(step.state, inputs(T0 + DAY, pending_verified=True))
    assert step.state == DkimState(active="rf202612a", activated_at=T0 + DAY)
    assert reasons(step.events) == [ACTIVATED] and step.actions == []
    s1 = step.state
    # just before rotateEvery: still S1 alone
    assert advance(s1, inputs(T0 + 180 * DAY)).actions == []
    # rotateEvery passed: S2 pending beside active S1
    later = T0 + 181 * DAY
    step = advance(s1, inputs(later))
    assert step.actions == [("generate", "rf202705a")] and reasons(step.events) == [GENERATED]
    assert (step.state.active, step.state.pending) == ("rf202612a", "rf202705a")
    # S2 verified: S2 active, S1 revoked
    step = advance(step.state, inputs(later + DAY, pending_verified=True))
    assert reasons(step.events) == [ACTIVATED, REVOKED] and step.actions == []
    revoked = step.state
    assert (revoked.active, revoked.pending, revoked.revoked) == ("rf202705a", None, "rf202612a")
    assert revoked.revoked_at == later + DAY and not revoked.safe_to_remove_revoked
    assert revoked.to_status()["safeToRemoveRevoked"] is False
    # before the longest maxAge (retention) has passed: kept
    assert advance(revoked, inputs(later + 2 * DAY, retention=5 * DAY)).actions == []
    # after: safe to remove, its Secret deleted, the record may go
    step = advance(revoked, inputs(later + 6 * DAY + timedelta(seconds=1), retention=5 * DAY))
    assert step.actions == [("delete", "rf202612a")] and reasons(step.events) == [SAFE_TO_REMOVE]
    assert step.state.safe_to_remove_revoked and step.state.revoked == "rf202612a"
    assert "rf202612a._domainkey.example.com may be removed" in step.events[0][1]
    # and then it stays quiet
    assert advance(step.state, inputs(later + 7 * DAY, retention=5 * DAY)).actions == []


def test_the_annotation_rotates_at_once_and_only_once_per_value() -> None:
    active = DkimState(active="rf202612a", activated_at=T0, rotate_request=None)
    step = advance(active, inputs(T0 + DAY, rotate_request="now"))
    assert step.actions == [("generate", "rf202612b")]
    assert step.state.rotate_request == "now" and step.state.pending == "rf202612b"
    done = advance(step.state, inputs(T0 + 2 * DAY, rotate_request="now", pending_verified=True)).state
    assert done.active == "rf202612b"
    assert advance(done, inputs(T0 + 3 * DAY, rotate_request="now")).actions == [], "same value: no new rotation"
    assert advance(done, inputs(T0 + 3 * DAY, rotate_request="again")).actions == [("generate", "rf202612c")]


def test_an_annotation_present_at_creation_does_not_rotate_the_first_key() -> None:
    step = advance(DkimState(), inputs(T0, rotate_request="x"))
    state = advance(step.state, inputs(T0, rotate_request="x", pending_verified=True)).state
    assert state.active == "rf202612a" and advance(state, inputs(T0 + DAY, rotate_request="x")).actions == []


def test_the_first_key_takes_the_specs_selector() -> None:
    step = advance(DkimState(), inputs(T0, first_selector="mail"))
    assert step.actions == [("generate", "mail")]
    state = advance(step.state, inputs(T0, first_selector="mail", pending_verified=True)).state
    rotated = advance(state, inputs(T0 + 200 * DAY, first_selector="mail"))
    assert rotated.actions == [("generate", "rf202706a")]
    # a lost first key is not made again under the same (published, now wrong) selector
    assert advance(DkimState(), inputs(T0, first_selector="mail", taken=["mail"])).actions == [
        ("generate", "rf202612a")
    ]


def test_a_forced_rotation_before_the_revoked_key_aged_out_supersedes_it() -> None:
    state = DkimState(active="b", revoked="a", revoked_at=T0, activated_at=T0, pending="c")
    step = advance(state, inputs(T0 + DAY, pending_verified=True, retention=5 * DAY))
    assert step.actions == [("delete", "a")]
    assert (step.state.active, step.state.revoked, step.state.revoked_at) == ("c", "b", T0 + DAY)
    assert reasons(step.events) == [REVOKED, ACTIVATED, REVOKED]


def test_state_round_trips_through_status() -> None:
    state = DkimState(active="b", revoked="a", revoked_at=T0, activated_at=T0, rotate_request="r1")
    assert DkimState.from_status(state.to_status()) == state
    assert DkimState.from_status({}) == DkimState() and DkimState.from_status(None) == DkimState()
    assert DkimState().to_status()["safeToRemoveRevoked"] is None
