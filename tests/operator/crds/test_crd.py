"""The generated CRDs are structural, documented, committed as generated, and shaped for kubectl."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from crdgen import crd
from smtp_relay.config.spec import SmtpRelaySpec

ROOT = Path(__file__).resolve().parents[3]
CRDS = crd.all_crds()


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def spec_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", sorted(CRDS))
@pytest.mark.parametrize("folder", ["crds", "charts/relayfleet/crds"])
def test_committed_files_equal_generated(name: str, folder: str) -> None:
    path = ROOT / folder / name
    assert path.read_text() == crd.render_yaml(CRDS[name]), "run: python -m relay_operator.crd --write"


def test_check_mode_agrees() -> None:
    assert crd.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schema_is_structural(name: str) -> None:
    """No $ref, no anyOf/oneOf, a type (or int-or-string) on every node, no additionalProperties: false."""
    for path, node in nodes(spec_schema(name)):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert node.get("additionalProperties", True) is True, path
        if "default" in node:
            assert None not in (
                node["default"],
                *(node["default"].values() if isinstance(node["default"], dict) else ()),
            ), path


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_spec_and_status_field_is_described(name: str) -> None:
    schema = spec_schema(name)
    for part in ("spec", "status"):
        for path, node in nodes(schema["properties"][part], part):
            if path.endswith("[]") and node.get("type") != "object":
                continue  # a scalar list item: kubectl explain shows the list field's description
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_patterns_are_re2_compatible(name: str) -> None:
    """The apiserver compiles patterns with Go's RE2: no lookaround, no backreferences."""
    for path, node in nodes(spec_schema(name)):
        if "pattern" in node:
            assert not re.search(r"\(\?[=!<]|\\[1-9]", node["pattern"]), path
            re.compile(node["pattern"])


def test_domain_length_guard_became_max_length() -> None:
    domain = spec_schema(f"sendingdomains.{crd.API_GROUP}.yaml")["properties"]["spec"]["properties"]["domain"]
    assert domain["maxLength"] == 253
    assert domain["minLength"] == 1


def test_every_cel_rule_has_a_python_mirror() -> None:
    for name in CRDS:
        for path, node in nodes(spec_schema(name)):
            for rule in node.get("x-kubernetes-validations", []):
                assert rule["rule"] in crd.RULE_MIRRORS, path
                assert rule["message"], path


def test_smtprelay_shape() -> None:
    doc = CRDS[f"smtprelays.{crd.API_GROUP}.yaml"]
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


def test_spec_details_carry_over() -> None:
    spec = spec_schema(f"smtprelays.{crd.API_GROUP}.yaml")["properties"]["spec"]
    props = spec["properties"]
    listener = props["listeners"]["items"]["properties"]
    assert listener["tls"]["enum"] == ["none", "starttls", "implicit"]
    assert listener["port"]["minimum"] == 1 and listener["port"]["maximum"] == 65535
    assert props["replicas"]["default"] == 2
    size = props["policy"]["properties"]["maxMessageSize"]
    assert size["x-kubernetes-int-or-string"] is True and size["default"] == "25Mi"
    assert props["resources"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "storage" not in props["queue"]["default"]  # null defaults are dropped
    assert props["tls"]["type"] == "object"  # Optional without anyOf
    routing_default = props["routing"]["properties"]["default"]
    assert routing_default["x-kubernetes-validations"][0]["message"].startswith("exactly one of")
    # The whole spec defaults, so `spec: {}` is stored with the same values the model would use.
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    assert SmtpRelaySpec.model_validate(defaults) == SmtpRelaySpec()


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
    doc = CRDS[f"sendingdomains.{crd.API_GROUP}.yaml"]
    assert doc["spec"]["names"]["shortNames"] == ["sd"]
    assert "scale" not in doc["spec"]["versions"][0]["subresources"]
    columns = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Verified", "DKIM", "SPF", "DMARC", "Age"]


def test_files_are_single_yaml_documents() -> None:
    for name in CRDS:
        docs = list(yaml.safe_load_all((ROOT / "crds" / name).read_text()))
        assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition"
