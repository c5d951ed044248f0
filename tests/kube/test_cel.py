"""CRD ``x-kubernetes-validations`` rules run through cel-python with the Kubernetes CEL libraries.

Semantics and messages follow apiextensions-apiserver 1.31 (schema/cel/validation.go): the rule runs at its
node with ``self`` typed by the schema, a false rule is ``<path>: Invalid value: "<type>": <message>``,
``messageExpression``, ``reason`` and ``fieldPath`` change the error, transition rules see ``oldSelf``.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import cel_env, cel_rules
from tests.kube.client import MERGE, accepted, send
from tests.peers.kube import KubeApi

Json = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
GADGETS = "/apis/example.com/v1/namespaces/default/gadgets"
SPEC: Json = {
    "type": "object",
    "x-kubernetes-validations": [
        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
        {"rule": "!has(self.owner) || self.owner == oldSelf.owner", "message": "owner is immutable"},
        {
            "rule": "self.max < 100",
            "messageExpression": "'max is ' + string(self.max) + ', above 99'",
            "fieldPath": ".max",
            "reason": "FieldValueForbidden",
        },
    ],
    "properties": {
        "min": {"type": "integer", "default": 0},
        "max": {"type": "integer", "default": 10},
        "ratio": {"type": "number", "x-kubernetes-validations": [{"rule": "self > 0.5"}]},
        "owner": {"type": "string"},
        "addr": {"type": "string", "x-kubernetes-validations": [{"rule": "isIP(self) && ip(self).family() == 4"}]},
        "dashed-name": {"type": "string"},
        "items": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "v": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.v >= oldSelf.v", "message": "v may only grow"}],
            },
        },
    },
}
CRD: Json = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": SPEC}}},
            }
        ],
    },
}


def gadget(**spec: Any) -> Json:
    return {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": spec}


@pytest.fixture
def api(kube_api: KubeApi) -> KubeApi:
    kube_api.register_crd(CRD)
    return kube_api


def test_rules_run_on_create_with_defaults_applied(api: KubeApi) -> None:
    reply = send(api, "POST", GADGETS, gadget(min=20))  # max defaults to 10
    assert reply.code == 422
    assert reply.message == 'Gadget.example.com "g" is invalid: spec: Invalid value: "object": min must not exceed max'
    assert reply.body["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "object": min must not exceed max', "field": "spec"}
    ]


def test_message_expression_field_path_and_reason(api: KubeApi) -> None:
    reply = send(api, "POST", GADGETS, gadget(max=150))
    assert reply.body["details"]["causes"] == [
        {"reason": "FieldValueForbidden", "message": "Forbidden: max is 150, above 99", "field": "spec.max"}
    ]


def test_numbers_are_typed_by_the_schema_and_default_messages(api: KubeApi) -> None:
    accepted(send(api, "POST", GADGETS, gadget(ratio=1)))  # an integer literal in a number field is a double
    reply = send(api, "PATCH", f"{GADGETS}/g", {"spec": {"ratio": 0.25}}, MERGE)
    assert reply.body["details"]["causes"][0]["message"] == 'Invalid value: "number": failed rule: self > 0.5'


def test_transition_rules_see_old_self_only_on_update(api: KubeApi) -> None:
    accepted(send(api, "POST", GADGETS, gadget(owner="a", items=[{"name": "x", "v": 2}])))
    reply = send(api, "PATCH", f"{GADGETS}/g", {"spec": {"owner": "b"}}, MERGE)
    assert 'spec: Invalid value: "object": owner is immutable' in reply.message
    shrink = send(api, "PATCH", f"{GADGETS}/g", {"spec": {"items": [{"name": "x", "v": 1}]}}, MERGE)
    assert 'spec.items[0]: Invalid value: "object": v may only grow' in shrink.message
    # A new map-list item has no old value: its transition rule is not run.
    grown = {"spec": {"items": [{"name": "x", "v": 3}, {"name": "y", "v": 0}]}}
    assert accepted(send(api, "PATCH", f"{GADGETS}/g", grown, MERGE))["spec"]["items"][1] == {"name": "y", "v": 0}


def test_network_library(api: KubeApi) -> None:
    accepted(send(api, "POST", GADGETS, gadget(addr="10.1.2.3")))
    for bad in ("::1", "010.1.2.3", "10.1.2.3/8", "::ffff:10.1.2.3"):
        reply = send(api, "PATCH", f"{GADGETS}/g", {"spec": {"addr": bad}}, MERGE)
        assert reply.code == 422 and "spec.addr: Invalid value" in reply.message, bad


def test_schema_errors_that_block_cel(api: KubeApi) -> None:
    reply = send(api, "POST", GADGETS, gadget(min="x", max=1))
    assert "some validation rules were not checked" in reply.message
    assert "min must not exceed max" not in reply.message


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("self.indexOf('b') == 1 && self.lastIndexOf('b') == 3", "abab", True),
        ("self.substring(1, 3) == 'ba' && self.charAt(0) == 'a'", "abab", True),
        ("self.split(',').size() == 3 && ['a', 'b'].join('-') == 'a-b'", "a,b,c", True),
        ("self.upperAscii() == 'ABAB' && ' x '.trim() == 'x' && self.replace('b', 'c') == 'acac'", "abab", True),
        ("self.matches('^a.*b$') && self.find('b+') == 'b' && self.findAll('b').size() == 2", "abab", True),
        ("[1, 2, 3].isSorted() && [1, 2, 3].sum() == 6 && [3, 1].min() == 1 && [1, 5].max() == 5", "", True),
        ("[1, 2, 1].indexOf(1) == 0 && [1, 2, 1].lastIndexOf(1) == 2", "", True),
        ("cidr('10.0.0.0/8').containsIP(ip('10.1.2.3')) && cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')", "", True),
        ("cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8') && cidr('10.0.0.0/8').prefixLength() == 8", "", True),
        ("ip('127.0.0.1').isLoopback() && ip('::').isUnspecified() && ip('8.8.8.8').isGlobalUnicast()", "", True),
        ("isCIDR('10.0.0.0/33') || isCIDR('10.0.0.1') || isIP('fe80::1%eth0')", "", False),
        ("[1, 2].exists_one(x, x > 1) && [1, 2].all(x, x > 0) && [1, 2].filter(x, x > 1) == [2]", "", True),
    ],
)
def test_kubernetes_libraries(rule: str, value: str, expected: bool) -> None:
    result = cel_env.program(cel_env.compile_rule(rule)).evaluate({"self": cel_env.to_cel(value, {"type": "string"})})
    assert bool(result) is expected


def test_escaped_property_names_and_runtime_errors() -> None:
    schema = {
        "type": "object",
        "properties": {"dashed-name": {"type": "string"}, "n": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.dashed__dash__name == 'x'"}, {"rule": "self.n > 0"}],
    }
    assert [str(e) for e in cel_rules.evaluate(schema, {"dashed-name": "x", "n": 1})] == []
    errors = [str(e) for e in cel_rules.evaluate(schema, {"dashed-name": "x"})]
    assert errors == ['<nil>: Invalid value: "object": no such key: n evaluating rule: self.n > 0']


def test_newer_versions_leave_the_type_out() -> None:
    """Kubernetes 1.35 stopped printing the schema type: objects and arrays omit the value, scalars show it."""
    schema = {"type": "integer", "x-kubernetes-validations": [{"rule": "self < 3", "message": "too big"}]}
    assert [str(e) for e in cel_rules.evaluate(schema, 5, path="spec.n")] == [
        'spec.n: Invalid value: "integer": too big'
    ]
    assert [str(e) for e in cel_rules.evaluate(schema, 5, path="spec.n", minor=35)] == [
        "spec.n: Invalid value: 5: too big"
    ]


def _rule_nodes(node: Json) -> list[Json]:
    found = [node] if node.get("x-kubernetes-validations") else []
    for sub in [*(node.get("properties") or {}).values(), node.get("items")]:
        if isinstance(sub, dict):
            found += _rule_nodes(sub)
    return found


def test_every_rule_of_the_repository_crds_compiles_and_evaluates() -> None:
    """Each rule parses, and evaluates to a boolean on a value of its node's type."""
    samples = {"string": "10.0.0.1", "object": {}}
    seen = 0
    for path in sorted(glob.glob(str(ROOT / "crds" / "*.yaml"))):
        crd = yaml.safe_load(Path(path).read_text())
        for node in _rule_nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            value = samples[node["type"]]
            if node["type"] == "object" and "listeners" in (node.get("properties") or {}):
                value = {"listeners": [{"name": "a", "port": 25}]}
            if "spec" in (node.get("properties") or {}):  # the root: its rules read metadata.name
                value = {"metadata": {"name": "outbound"}}
            for error in cel_rules.evaluate(node, value):
                assert "evaluating rule" not in str(error), str(error)  # false is fine, a runtime error is not
            seen += len(node["x-kubernetes-validations"])
    assert seen == 24  # 3 of them spec.limits (LimitsSpec, RedisSpec)


def test_unchanged_values_are_ratcheted_from_1_30_but_transition_rules_still_run() -> None:
    """CRDValidationRatcheting (beta, on by default from 1.30): a rule without oldSelf is not run on a value equal
    to the stored one (its error would be ignored); a transition rule is never ratcheted."""
    schema: Json = {
        "type": "object",
        "properties": {
            "plain": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 3", "message": "short"}]},
            "moving": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "oldSelf.size() < 3", "message": "was"}],
            },
        },
    }
    stored = {"plain": "long", "moving": "long"}
    assert [e.field for e in cel_rules.evaluate(schema, dict(stored), stored)] == ["moving"]
    assert [e.field for e in cel_rules.evaluate(schema, {**stored, "plain": "longer"}, stored)] == ["plain", "moving"]
    assert [e.field for e in cel_rules.evaluate(schema, dict(stored), stored, minor=29)] == ["plain", "moving"]
    assert [e.field for e in cel_rules.evaluate(schema, dict(stored))] == ["plain"], "a create has no oldSelf"
