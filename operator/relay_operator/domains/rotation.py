"""The DKIM rotation of a generated key, as a pure state machine over status.dkim (a fake clock tests it).

    no key --------------------> S1 pending             (DkimKeyGenerated)
    S1 pending, verified in DNS -> S1 active              (DkimKeyActivated)
    rotateEvery passed, or the relayfleet.io/rotate-dkim annotation changed
                               -> S2 pending, S1 active  (DkimKeyGenerated)
    S2 verified               -> S2 active, S1 revoked  (DkimKeyActivated, DkimKeyRevoked)
    revokedAt + the longest queue.retry.maxAge of the domain's relays passed
                               -> safeToRemoveRevoked, S1's Secret deleted (DkimRevokedKeySafeToRemove)

A new key is published before it signs (pending until DNS has it), so no receiver ever sees a signature
whose key it cannot find; the old key stays in DNS until no queued message signed with it can still be
delivered, after which its record may go. `advance` decides; reconcile carries the actions out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from relay_operator.conditions import timestamp
from smtp_relay.dnscheck.dkim_keys import new_selector

GENERATED = "DkimKeyGenerated"
ACTIVATED = "DkimKeyActivated"
REVOKED = "DkimKeyRevoked"
SAFE_TO_REMOVE = "DkimRevokedKeySafeToRemove"

DEFAULT_RETENTION = timedelta(days=5)
"""How long a revoked key stays when no named SmtpRelay says otherwise: queue.retry.maxAge's default."""


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class DkimState:
    """The rotation's memory, kept in status.dkim (so a restarted operator goes on where it stopped)."""

    active: str | None = None
    pending: str | None = None
    revoked: str | None = None
    activated_at: datetime | None = None
    revoked_at: datetime | None = None
    safe_to_remove_revoked: bool = False
    rotate_request: str | None = None
    """The relayfleet.io/rotate-dkim value the last rotation answered."""

    @classmethod
    def from_status(cls, dkim: Mapping[str, Any] | None) -> DkimState:
        dkim = dkim or {}

        def text(key: str) -> str | None:
            value = dkim.get(key)
            return str(value) if value else None

        return cls(
            active=text("activeSelector"),
            pending=text("pendingSelector"),
            revoked=text("revokedSelector"),
            activated_at=parse_time(dkim.get("activatedAt")),
            revoked_at=parse_time(dkim.get("revokedAt")),
            safe_to_remove_revoked=bool(dkim.get("safeToRemoveRevoked")),
            rotate_request=text("rotateRequest"),
        )

    def to_status(self) -> dict[str, Any]:
        """The rotation part of status.dkim (a merge patch: None removes a field that no longer applies)."""
        return {
            "activeSelector": self.active,
            "pendingSelector": self.pending,
            "revokedSelector": self.revoked,
            "activatedAt": timestamp(self.activated_at) if self.activated_at else None,
            "revokedAt": timestamp(self.revoked_at) if self.revoked_at else None,
            "safeToRemoveRevoked": self.safe_to_remove_revoked if self.revoked else None,
            "rotateRequest": self.rotate_request,
        }

    def selectors(self) -> list[str]:
        return [s for s in (self.active, self.pending, self.revoked) if s]


@dataclass(frozen=True)
class Inputs:
    """What the machine needs beyond its state: the spec, the annotation, DNS, the clock."""

    now: datetime
    rotate_every: timedelta
    domain: str
    first_selector: str | None = None
    """spec.dkim.selector: the name of the first key, when the team chose it."""
    rotate_request: str | None = None
    """The relayfleet.io/rotate-dkim annotation's current value."""
    pending_verified: bool = False
    """Every record of the pending key was found in DNS, matching."""
    retention: timedelta = DEFAULT_RETENTION
    """The longest queue.retry.maxAge of the domain's relays: how long a signed message may still travel."""
    taken: Collection[str] = ()
    """Selectors in use elsewhere (never reused for a new key)."""


Action = Literal["generate", "delete"]


@dataclass(frozen=True)
class Transition:
    """The new state, the Secrets to create or delete, and the Events (reason, message) to post."""

    state: DkimState
    actions: list[tuple[Action, str]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)


def _record(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def rotation_due(state: DkimState, inputs: Inputs) -> str | None:
    """Why a new key is due now (None when not): the period passed, or the annotation asked."""
    if state.active is None or state.pending is not None:
        return None
    if inputs.rotate_request and inputs.rotate_request != state.rotate_request:
        return f"relayfleet.io/rotate-dkim is {inputs.rotate_request!r}"
    if state.activated_at is not None and inputs.now >= state.activated_at + inputs.rotate_every:
        return f"{state.active} has been active since {timestamp(state.activated_at)} (rotateEvery)"
    return None


def advance(state: DkimState, inputs: Inputs) -> Transition:
    """One step or more of the rotation at `inputs.now`: activation, revocation, removal, then a new key."""
    actions: list[tuple[Action, str]] = []
    events: list[tuple[str, str]] = []
    now, domain = inputs.now, inputs.domain

    if state.pending is not None and inputs.pending_verified:
        old = state.active
        if state.revoked is not None and not state.safe_to_remove_revoked:
            # a rotation forced before the previous revoked key aged out: only one key is kept revoked
            actions.append(("delete", state.revoked))
            events.append((REVOKED, f"{state.revoked} is superseded by a newer revoked key: its Secret is deleted"))
        events.append((ACTIVATED, f"{state.pending} signs from now on: {_record(state.pending, domain)} is published"))
        state = dataclasses.replace(state, active=state.pending, pending=None, activated_at=now)
        if old is not None:
            events.append((REVOKED, f"{old} no longer signs; keep {_record(old, domain)} published until it is safe"
                                    " to remove (safeToRemoveRevoked)"))  # fmt: skip
            state = dataclasses.replace(state, revoked=old, revoked_at=now, safe_to_remove_revoked=False)

    if (
        state.revoked is not None
        and not state.safe_to_remove_revoked
        and state.revoked_at is not None
        and now >= state.revoked_at + inputs.retention
    ):
        actions.append(("delete", state.revoked))
        events.append((SAFE_TO_REMOVE, f"no queued message can still need {state.revoked}: its key Secret is deleted"
                                       f" and {_record(state.revoked, domain)} may be removed from DNS"))  # fmt: skip
        state = dataclasses.replace(state, safe_to_remove_revoked=True)

    if state.active is None and state.pending is None:
        taken = [*state.selectors(), *inputs.taken]
        first = inputs.first_selector
        fresh = first is not None and not taken  # the team's name, for the very first key only
        selector = first if fresh and first is not None else new_selector(now, taken + ([first] if first else []))
        actions.append(("generate", selector))
        events.append((GENERATED, f"{selector}: publish {_record(selector, domain)}; it signs once DNS has it"))
        state = dataclasses.replace(state, pending=selector, rotate_request=inputs.rotate_request)
    else:
        why = rotation_due(state, inputs)
        if why is not None:
            taken = [*state.selectors(), *inputs.taken]
            if inputs.first_selector:
                taken.append(inputs.first_selector)
            selector = new_selector(now, taken)
            actions.append(("generate", selector))
            events.append((GENERATED, f"{selector} replaces {state.active} ({why}): publish {_record(selector, domain)}"
                                      f" beside the current key"))  # fmt: skip
            state = dataclasses.replace(state, pending=selector, rotate_request=inputs.rotate_request)
        elif inputs.rotate_request != state.rotate_request and state.pending is not None:
            state = dataclasses.replace(state, rotate_request=inputs.rotate_request)  # already rotating
    return Transition(state, actions, events)
