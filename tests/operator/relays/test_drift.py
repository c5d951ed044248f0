"""What a child's watch event asks of the operator (relays/drift.py)."""

from __future__ import annotations

from typing import Any

from relay_operator.merge import fingerprint
from relay_operator.relays.drift import child_event_action, owner_name

OWNER = [{"kind": "SmtpRelay", "name": "outbound", "uid": "u", "controller": True}]


def child(kind: str = "PodDisruptionBudget", rv: str = "7", generation: int | None = 1, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "metadata": {"uid": "c1", "resourceVersion": rv, "labels": {"a": "b"},
                                                      "ownerReferences": OWNER, **meta}}  # fmt: skip
    if generation is not None:
        body["metadata"]["generation"] = generation
    return body


def seen(body: dict[str, Any]) -> tuple[str, str | None]:
    return str(body["metadata"]["resourceVersion"]), fingerprint(body)


def test_listing_creation_and_the_operators_own_writes_need_nothing() -> None:
    mine = child()
    assert child_event_action(None, mine, None) == "ignore"  # kopf's initial listing
    assert child_event_action("ADDED", mine, None) == "ignore"  # it came to exist: the operator made it
    assert child_event_action("MODIFIED", mine, seen(mine)) == "ignore"  # the very version it wrote
    assert child_event_action("MODIFIED", child(deletionTimestamp="2026-12-03T08:00:00Z"), None) == "ignore"


def test_a_deleted_or_edited_child_is_reconciled() -> None:
    mine = child()
    assert child_event_action("DELETED", mine, seen(mine)) == "reconcile"
    relabelled = child(rv="8", labels={"a": "edited"})
    assert child_event_action("MODIFIED", relabelled, seen(mine)) == "reconcile"  # same generation, other labels
    assert child_event_action("MODIFIED", child(rv="9", generation=2), seen(mine)) == "reconcile"  # a spec edit
    assert child_event_action("MODIFIED", mine, None) == "reconcile"  # not known (the operator restarted)
    config = child("ConfigMap", generation=None)
    assert child_event_action("MODIFIED", child("ConfigMap", rv="8", generation=None), seen(config)) == "reconcile"


def test_a_controllers_status_report_refreshes_only_a_statefulsets_owner() -> None:
    sts, pdb = child("StatefulSet"), child()
    assert child_event_action("MODIFIED", child("StatefulSet", rv="8"), seen(sts)) == "status"
    assert child_event_action("MODIFIED", child(rv="8"), seen(pdb)) == "ignore"


def test_the_owner_is_the_controlling_smtprelay() -> None:
    assert owner_name(child()) == "outbound"
    assert (
        owner_name({"metadata": {"ownerReferences": [{"kind": "SmtpRelay", "name": "x", "controller": False}]}}) is None
    )
    assert owner_name({"metadata": {}}) is None
