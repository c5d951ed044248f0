"""The spec schemas are structural, documented, RE2-compatible, and carry the models' details over."""

from __future__ import annotations

import re

import pytest

from crdgen.structural import structural
from smtp_relay.config.spec import API_GROUP, SmtpRelaySpec
from tests.operator.crdgen.generated import CRDS, nodes, spec_schema


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schema_is_structural(name: str) -> None:
    """No $ref, no anyOf/oneOf, a type (or int-or-string) on every node, no additionalProperties: false."""
    for path, node in nodes(spec_schema(name)):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert node.get("additionalProperties", True) is not False, path  # apiextensions refuses false
        if isinstance(node.get("additionalProperties"), dict):  # a map: structural only without properties
            assert "properties" not in node and node["additionalProperties"].get("type"), path
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
    domain = spec_schema(f"sendingdomains.{API_GROUP}.yaml")["properties"]["spec"]["properties"]["domain"]
    assert domain["maxLength"] == 253
    assert domain["minLength"] == 1


def test_spec_details_carry_over() -> None:
    spec = spec_schema(f"smtprelays.{API_GROUP}.yaml")["properties"]["spec"]
    props = spec["properties"]
    listener = props["listeners"]["items"]["properties"]
    assert listener["tls"]["enum"] == ["none", "starttls", "implicit"]
    assert listener["port"]["minimum"] == 1 and listener["port"]["maximum"] == 65535
    assert props["replicas"]["default"] == 2
    size = props["policy"]["properties"]["maxMessageSize"]
    assert size["x-kubernetes-int-or-string"] is True and size["default"] == "25Mi"
    assert props["resources"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["queue"]["default"]["storage"] == "1Gi"  # a persistent spool unless asked otherwise
    routing_defaults = props["routing"]["default"]["default"]
    assert "smarthosts" not in routing_defaults and "mx" not in routing_defaults  # null defaults are dropped
    assert props["tls"]["type"] == "object"  # Optional without anyOf
    routing_default = props["routing"]["properties"]["default"]
    assert routing_default["x-kubernetes-validations"][0]["message"].startswith("exactly one of")
    # The whole spec defaults, so `spec: {}` is stored with the same values the model would use.
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    assert SmtpRelaySpec.model_validate(defaults) == SmtpRelaySpec()


def test_rules_and_hints_are_arguments() -> None:
    """`structural` attaches exactly the rules and hints it is given (the CRDs use crdgen.rules)."""
    bare = structural(SmtpRelaySpec, rules={}, hints={})
    assert not [path for path, node in nodes(bare) if "x-kubernetes-validations" in node]
    routing_default = bare["properties"]["routing"]["properties"]["default"]
    assert "minItems" not in routing_default["properties"]["smarthosts"]
    with_rules = structural(SmtpRelaySpec) | {"default": {}}  # smtprelay_crd defaults the whole spec
    assert with_rules == spec_schema(f"smtprelays.{API_GROUP}.yaml")["properties"]["spec"]
