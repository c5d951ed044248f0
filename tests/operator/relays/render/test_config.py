"""The ConfigMap: the document the relay loads, with the very spec the operator validated."""

from __future__ import annotations

import yaml

from relay_operator.relays.render.config import build_configmap
from smtp_relay.config.manifest import load_documents
from tests.operator.relays.render.specs import FULL, OWNER


def test_configmap_round_trips_through_the_relays_loader() -> None:
    cm = build_configmap(OWNER, FULL)
    assert cm["metadata"]["name"] == "outbound-config"
    document = yaml.safe_load(cm["data"]["relay.yaml"])
    assert document["kind"] == "SmtpRelay" and document["metadata"] == {"name": "outbound", "namespace": "mail"}
    loaded = load_documents([document])
    assert loaded.spec == FULL
    assert "null" not in cm["data"]["relay.yaml"]
