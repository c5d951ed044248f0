"""The full set of children: every one owned by the SmtpRelay and labelled as its own."""

from __future__ import annotations

import pytest

from relay_operator.relays.render.children import build_children
from relay_operator.settings import Settings
from tests.operator.relays.render.specs import FULL, LABELS, OWNER


@pytest.mark.parametrize("settings", [Settings(), Settings(service_monitor=True, network_policy=True)])
def test_every_child_is_owned_and_labelled(settings: Settings) -> None:
    children = build_children(OWNER, FULL, settings)
    kinds = [c["kind"] for c in children]
    assert kinds[:6] == ["ConfigMap", "Secret", "Service", "Service", "StatefulSet", "PodDisruptionBudget"]
    assert len(children) == (8 if settings.service_monitor else 6)
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "mail"
        assert LABELS.items() <= meta["labels"].items()
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "relayfleet.io/v1alpha1",
            "kind": "SmtpRelay",
            "name": "outbound",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
