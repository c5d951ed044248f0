"""The CRD documents are shaped for kubectl: names, scale subresource, printer columns, conditions."""

from __future__ import annotations

from smtp_relay.config.spec import API_GROUP
from tests.operator.crdgen.generated import CRDS, spec_schema


def test_smtprelay_shape() -> None:
    doc = CRDS[f"smtprelays.{API_GROUP}.yaml"]
    assert doc["metadata"]["name"] == "smtprelays.relayfleet.io"
    assert doc["spec"]["scope"] == "Namespaced"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "SmtpRelay",
        "smtprelays",
        ["smr"],
        ["relayfleet"],
    )
    (version,) = doc["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Replicas", "Ready", "Queue", "Age", "Ports", "Status"]
    assert columns["Ports"]["priority"] == 1 and columns["Status"]["priority"] == 1
    assert "priority" not in columns["Replicas"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in columns.values():
        field = column["jsonPath"].split(".")
        if field[1] == "status":
            assert field[2] in status, column


def test_conditions_are_a_map_list() -> None:
    for name in CRDS:
        conditions = spec_schema(name)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["properties"]) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }


def test_sendingdomain_columns() -> None:
    doc = CRDS[f"sendingdomains.{API_GROUP}.yaml"]
    assert doc["spec"]["names"]["shortNames"] == ["sd"]
    assert "scale" not in doc["spec"]["versions"][0]["subresources"]
    columns = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Verified", "DKIM", "SPF", "DMARC", "Age"]
