"""Every CEL rule in the CRDs compiles with the Kubernetes CEL libraries and says why it refuses.

The corpus (test_corpus.py) proves that the rules and the models refuse the same documents; these tests
prove the rules are well formed, and that the name rule refuses what would break the relay's children.
"""

from __future__ import annotations

import pytest

from crdgen.rules import MAX_RELAY_NAME
from tests.kube import cel_env, cel_rules
from tests.operator.crdgen.generated import CRDS, nodes, spec_schema


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    seen = 0
    for name in CRDS:
        for path, node in nodes(spec_schema(name)):
            for rule in node.get("x-kubernetes-validations", []):
                cel_env.compile_rule(rule["rule"])  # raises on a syntax error
                assert rule["message"], path
                seen += 1
    assert seen >= 15


def _name_errors(name: str) -> list[str]:
    root = spec_schema("smtprelays.relayfleet.io.yaml")
    document = {"apiVersion": "relayfleet.io/v1alpha1", "kind": "SmtpRelay", "metadata": {"name": name}}
    return [str(e) for e in cel_rules.evaluate({**root, "properties": {}}, document)]


@pytest.mark.parametrize("name", ["outbound", "a", "relay-1", "r" * MAX_RELAY_NAME])
def test_relay_names_that_make_valid_children_pass(name: str) -> None:
    assert _name_errors(name) == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("relay.example", "DNS label"),  # a dot: the Service name would be invalid
        ("1relay", "DNS label"),  # a leading digit: invalid Service name (RFC 1035)
        ("Relay", "DNS label"),
        ("relay-", "DNS label"),
        ("r" * (MAX_RELAY_NAME + 1), f"at most {MAX_RELAY_NAME} characters"),
    ],
)
def test_relay_names_that_break_children_are_refused(name: str, why: str) -> None:
    errors = _name_errors(name)
    assert len(errors) == 1 and why in errors[0], errors
