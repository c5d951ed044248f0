"""CRDs whose CEL rules are too expensive are refused at registration, as by apiextensions' CRD validation.

Expected costs are worked out by hand from cel-go's checker/cost.go, apiserver/pkg/cel/library/cost.go and
the size estimates of apiserver/pkg/cel/common/schemas.go (Kubernetes 1.31); see cel_cost.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import cel_cost
from tests.kube.client import send
from tests.kube.emulator import KubeEmulator
from tests.kube.fielderr import StatusError
from tests.peers.kube import KubeApi

Json = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
UNBOUNDED_STRING = 3 * 1024 * 1024 - 2
PER_STRING_ITEM = 3 * 1024 * 1024 // 3  # items of minimum size 2 ("") plus a comma in a 3 MiB request


def crd(items: Json, list_extra: Json | None = None, rule: str = "isIP(self)") -> Json:
    items = {**items, "x-kubernetes-validations": [{"rule": rule, "message": "bad"}]}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"ips": {"type": "array", "items": items, **(list_extra or {})}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


PATH = "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[ips].items.x-kubernetes-validations[0].rule"


def test_costs_of_a_rule_follow_the_apiservers_model() -> None:
    # isIP(self): ceil(size * 0.1) for the call + 1 for `self`.
    bounded = crd({"type": "string", "maxLength": 45}, {"maxItems": 10})
    assert cel_cost.rule_costs(bounded) == [(PATH, "isIP(self)", (18 + 1) * 10)]  # 45 * 4 bytes = 180
    unbounded = crd({"type": "string"})
    assert cel_cost.rule_costs(unbounded) == [(PATH, "isIP(self)", (314573 + 1) * PER_STRING_ITEM)]
    listed = crd({"type": "string", "maxLength": 10}, {"maxItems": 4}, "self.size() < 5 && self.startsWith('a')")
    # size(): 1 + 1; `< 5`: 1 + that; startsWith: ceil(1 * 0.1) + 1 for self; && adds both sides.
    assert cel_cost.rule_costs(listed)[0][2] == (3 + 2) * 4


def test_a_rule_over_the_limit_refuses_the_crd(kube_api: KubeApi) -> None:
    reply = send(kube_api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd({"type": "string"}))
    assert reply.code == 422
    causes = reply.body["details"]["causes"]
    assert causes[0] == {
        "reason": "FieldValueForbidden",
        "message": "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the "
        "rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
        "field": PATH,
    }
    assert reply.message.startswith('CustomResourceDefinition.apiextensions.k8s.io "things.example.com" is invalid: [')
    assert "estimated rule cost total for entire OpenAPIv3 schema" in reply.message
    assert send(kube_api, "GET", "/apis/example.com/v1/namespaces/default/things").code == 404
    fixed = crd({"type": "string", "maxLength": 45}, {"maxItems": 100})
    assert send(kube_api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", fixed).code == 201


def test_factor_formats() -> None:
    # getCostErrorMessage: %f below 1.5x, one decimal up to 100x, then "more than 100x".
    assert cel_cost._factor(10_000_010, cel_cost.RULE_LIMIT) == "1.000001x"
    assert cel_cost._factor(25_000_000, cel_cost.RULE_LIMIT) == "2.5x"
    assert cel_cost._factor(10**12, cel_cost.RULE_LIMIT) == "more than 100x"


def test_undeclared_functions_and_parse_errors() -> None:
    text = crd({"type": "string", "maxLength": 10}, {"maxItems": 2}, "self.")
    assert "compilation failed" in str(cel_cost.crd_errors(text)[0])
    assert cel_cost.crd_errors(crd({"type": "string", "maxLength": 10}, {"maxItems": 2}), minor=31) == []
    old = [str(e) for e in cel_cost.crd_errors(crd({"type": "string", "maxLength": 10}, {"maxItems": 2}), minor=30)]
    assert old == [f"{PATH}: Invalid value: \"isIP(self)\": compilation failed: ERROR: <input>: undeclared "
                   "reference to 'isIP' (in container '')"]  # fmt: skip


def test_repository_crds_fit_the_budget() -> None:
    """Every rule of the shipped CRDs, costed as a 1.31 apiserver does, stays under both limits (the CRDs install)."""
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        costs = cel_cost.rule_costs(manifest)
        assert costs, path  # the estimator saw the rules
        for field, rule, cost in costs:
            assert cost <= cel_cost.RULE_LIMIT, (path.name, field, rule, cost)
        assert sum(cost for _, _, cost in costs) <= cel_cost.CRD_LIMIT, path.name
        assert cel_cost.crd_errors(manifest) == [], path.name
        KubeEmulator().register_crd(copy.deepcopy(manifest))  # and the emulator installs them unexempted


def test_an_unbounded_rule_is_refused_at_install() -> None:
    """What the CRDs looked like before their bounds: a rule over an unbounded list of unbounded strings."""
    manifest = yaml.safe_load((ROOT / "crds" / "smtprelays.relayfleet.io.yaml").read_text())
    networks = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "clients"
    ]["properties"]["allowedNetworks"]
    del networks["maxItems"], networks["items"]["maxLength"]
    over = {f: c for f, _, c in cel_cost.rule_costs(manifest) if c > cel_cost.RULE_LIMIT}
    assert list(over.values()) == [629148 * PER_STRING_ITEM]
    with pytest.raises(StatusError, match="estimated rule cost exceeds budget"):
        KubeEmulator().register_crd(copy.deepcopy(manifest))
