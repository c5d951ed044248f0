"""Custom resources are pruned, defaulted and validated against their CRD's structural schema on every write.

Cases and messages follow apiextensions-apiserver 1.31 (pkg/apiserver/schema/{pruning,defaulting},
pkg/apiserver/validation, kube-openapi's validate errors): 422 Invalid with one cause per failing path.
Every valid document of tests/operator/crds/corpus and examples/ is accepted by the emulator with the
repository's CRDs; every invalid one is refused, for the reason test_corpus.py names for the CRD side.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import structural
from tests.kube.client import JSONPATCH, MERGE, accepted, send
from tests.kube.server import register_crds
from tests.peers.kube import KubeApi

Json = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "operator" / "crdgen" / "corpus"
WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
SCHEMA: Json = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "ratio": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                "name": {"type": "string", "maxLength": 5, "minLength": 2, "pattern": "^[a-z]+$"},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "x-kubernetes-list-type": "set"},
                "ports": {
                    "type": "array",
                    "minItems": 1,
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "port": {"type": "integer", "default": 80}},
                    },
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 2},
                "size2": {"x-kubernetes-int-or-string": True},
                "at": {"type": "string", "format": "date-time"},
                "note": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "defaults": {"type": "object", "default": {}, "properties": {"a": {"type": "string", "default": "x"}}},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}
CRD: Json = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": SCHEMA},
                "subresources": {"status": {}},
            }
        ],
    },
}


def widget(obj_name: str = "w", **spec: Any) -> Json:
    meta = {"name": obj_name}
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta, "spec": {"size": 1, **spec}}


@pytest.fixture
def api(kube_api: KubeApi) -> KubeApi:
    kube_api.register_crd(CRD)
    return kube_api


def causes(reply: Any) -> list[str]:
    assert reply.code == 422 and reply.body["reason"] == "Invalid", (reply.code, reply.body)
    return [f"{c['field']}: {c['message']}" for c in reply.body["details"]["causes"]]


def test_defaults_are_applied_and_returned(api: KubeApi) -> None:
    created = accepted(send(api, "POST", WIDGETS, widget(ports=[{"name": "a"}])))
    assert created["spec"]["mode"] == "slow"  # a default
    assert created["spec"]["ports"] == [{"name": "a", "port": 80}]  # defaults inside list items
    assert created["spec"]["defaults"] == {"a": "x"}  # a defaulted object gets its own fields' defaults
    assert api.live("example.com/v1/widgets", "default", "w")["spec"]["mode"] == "slow"  # type: ignore[index]


def test_unknown_fields_are_pruned_with_a_warning_by_default(api: KubeApi) -> None:
    body = widget(bogus=1, free={"anything": {"goes": True}})
    body["metadata"]["bogusMeta"] = "x"
    body["extra"] = 1
    reply = send(api, "POST", WIDGETS, body)
    created = accepted(reply)
    assert "bogus" not in created["spec"] and "extra" not in created and "bogusMeta" not in created["metadata"]
    assert created["spec"]["free"] == {"anything": {"goes": True}}  # x-kubernetes-preserve-unknown-fields
    assert sorted(reply.warnings) == [
        '299 - "unknown field \\"extra\\""',
        '299 - "unknown field \\"metadata.bogusMeta\\""',
        '299 - "unknown field \\"spec.bogus\\""',
    ]


def test_unknown_fields_under_strict_field_validation(api: KubeApi) -> None:
    reply = send(api, "POST", WIDGETS, widget(bogus=1), fieldValidation="Strict")
    assert reply.code == 400 and reply.body["reason"] == "BadRequest"
    assert reply.message == (
        'Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown field "spec.bogus"'
    )
    accepted(send(api, "POST", WIDGETS, widget()))
    patched = send(api, "PATCH", f"{WIDGETS}/w", {"spec": {"bogus": 1}}, MERGE, fieldValidation="Strict")
    assert patched.code == 422 and patched.message.startswith(' "" is invalid: patch: Invalid value: "{')
    assert patched.message.endswith('strict decoding error: unknown field "spec.bogus"')
    quiet = send(api, "PATCH", f"{WIDGETS}/w", {"spec": {"bogus": 1}}, MERGE, fieldValidation="Ignore")
    assert accepted(quiet)["spec"].get("bogus") is None and quiet.warnings == []
    assert send(api, "POST", WIDGETS, widget("x"), fieldValidation="Loose").code == 400


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"size": "3"}, 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'),
        ({"size": 11}, "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"),
        ({"size": 0}, "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
        ({"ratio": 0}, "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0"),
        ({"name": "abcdef"}, "spec.name: Too long: must have at most 5 bytes"),
        ({"name": "a"}, 'spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long'),
        ({"name": "AB"}, "spec.name: Invalid value: \"AB\": spec.name in body should match '^[a-z]+$'"),
        ({"mode": "warp"}, 'spec.mode: Unsupported value: "warp": supported values: "fast", "slow"'),
        ({"tags": ["a", "b", "c"]}, "spec.tags: Too many: 3: must have at most 2 items"),
        ({"tags": ["a", "a"]}, 'spec.tags[1]: Duplicate value: "a"'),
        ({"ports": []}, "spec.ports: Invalid value: 0: spec.ports in body should have at least 1 items"),
        ({"ports": [{"port": 1}]}, "spec.ports[0].name: Required value"),
        (
            {"ports": [{"name": "a"}, {"name": "a"}]},
            'spec.ports[1]: Duplicate value: map[string]interface {}{"name":"a"}',
        ),
        ({"labels": {"a": "1", "b": "2", "c": "3"}}, "spec.labels: Too many: 3: must have at most 2 items"),
        (
            {"labels": {"a": 1}},
            'spec.labels.a: Invalid value: "integer": spec.labels.a in body must be of type string: "integer"',
        ),
        (
            {"size2": True},
            'spec.size2: Invalid value: "boolean": spec.size2 in body must be of type integer,string: "boolean"',
        ),
        (
            {"at": "yesterday"},
            'spec.at: Invalid value: "yesterday": spec.at in body must be of type date-time: "yesterday"',
        ),
    ],
)
def test_schema_violations_are_422_with_the_apiservers_message(api: KubeApi, spec: Json, expected: str) -> None:
    reply = send(api, "POST", WIDGETS, widget(**spec))
    assert expected in causes(reply)
    assert reply.message.startswith('Widget.example.com "w" is invalid: ')
    assert expected in reply.message


def test_required_nulls_and_several_errors(api: KubeApi) -> None:
    body = widget(name="Q", mode="x")
    del body["spec"]["size"]
    reply = send(api, "POST", WIDGETS, body)
    assert sorted(causes(reply)) == [
        '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
        "correct the existing errors to complete validation",
        'spec.mode: Unsupported value: "x": supported values: "fast", "slow"',
        'spec.name: Invalid value: "Q": spec.name in body should be at least 2 chars long',
        "spec.name: Invalid value: \"Q\": spec.name in body should match '^[a-z]+$'",
        "spec.size: Required value",
    ]
    assert reply.message.startswith('Widget.example.com "w" is invalid: [')
    # A null where the schema allows none is dropped (then defaulted); a nullable field keeps its null.
    created = accepted(send(api, "POST", WIDGETS, widget(mode=None, name=None, note=None)))
    assert created["spec"]["mode"] == "slow" and "name" not in created["spec"] and created["spec"]["note"] is None
    assert accepted(send(api, "POST", WIDGETS, widget("f", size=2.0)))["spec"]["size"] == 2.0  # an integral float


def test_updates_patches_and_status_are_validated(api: KubeApi) -> None:
    accepted(send(api, "POST", WIDGETS, widget()))
    assert "spec.size: Invalid value: 99: spec.size in body should be less than or equal to 10" in causes(
        send(api, "PATCH", f"{WIDGETS}/w", {"spec": {"size": 99}}, MERGE)
    )
    ops = [{"op": "replace", "path": "/spec/mode", "value": "warp"}]
    assert causes(send(api, "PATCH", f"{WIDGETS}/w", ops, JSONPATCH))[0].startswith("spec.mode: Unsupported value")
    stored = api.live("example.com/v1/widgets", "default", "w")
    assert stored is not None
    bad_put = copy.deepcopy(stored)
    bad_put["spec"]["size"] = "big"
    assert causes(send(api, "PUT", f"{WIDGETS}/w", bad_put))[0].startswith('spec.size: Invalid value: "string"')
    status = send(api, "PATCH", f"{WIDGETS}/w/status", {"status": {"phase": 3}}, MERGE)
    assert causes(status)[0].startswith('status.phase: Invalid value: "integer"')
    assert accepted(send(api, "PATCH", f"{WIDGETS}/w/status", {"status": {"phase": "Ready"}}, MERGE))


def test_ratcheting_lets_unchanged_invalid_values_through(kube_api: KubeApi) -> None:
    """CRDValidationRatcheting (beta, on by default since 1.30): tightening a schema does not lock objects."""
    kube_api.register_crd(CRD)
    accepted(send(kube_api, "POST", WIDGETS, widget(size=8)))
    tighter = copy.deepcopy(CRD)
    tighter["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"][
        "maximum"
    ] = 5
    kube_api.register_crd(tighter)
    assert accepted(send(kube_api, "PATCH", f"{WIDGETS}/w", {"spec": {"name": "ok"}}, MERGE))["spec"]["size"] == 8
    assert causes(send(kube_api, "PATCH", f"{WIDGETS}/w", {"spec": {"size": 9}}, MERGE))


def test_prune_and_default_walks() -> None:
    obj = {"apiVersion": "v", "kind": "K", "metadata": {"name": "n", "junk": 1}, "spec": {"size": 1, "x": 2}}
    assert structural.prune(obj, SCHEMA) == ["metadata.junk", "spec.x"]
    structural.apply_defaults(obj, SCHEMA)
    assert obj["spec"] == {"size": 1, "mode": "slow", "defaults": {"a": "x"}}
    assert structural.validate(obj, SCHEMA) == []


def _documents() -> list[tuple[str, Json, bool, str]]:
    found = []
    for path in sorted((CORPUS / "valid").glob("*.yaml")) + sorted((CORPUS / "invalid").glob("*.yaml")):
        reason = next((line[7:].strip() for line in path.read_text().splitlines() if line.startswith("# crd: ")), "")
        found.append((path.stem, yaml.safe_load(path.read_text()), path.parent.name == "valid", reason))
    for name in ("smtprelay.yaml", "sendingdomain.yaml", "quickstart.yaml"):
        for i, doc in enumerate(yaml.safe_load_all((ROOT / "examples" / name).read_text())):
            if doc and doc.get("kind") in ("SmtpRelay", "SendingDomain"):
                found.append((f"examples-{name}-{i}", doc, True, ""))
    return found


DOCUMENTS = _documents()
assert any(name.startswith("examples-") for name, *_ in DOCUMENTS)
assert sum(1 for name, *_ in DOCUMENTS if not name.startswith("examples-")) >= 10, f"corpus not found at {CORPUS}"
# test_corpus.py names the CRD side's reason in jsonschema's words; the apiserver says it this way.
APISERVER_WORDS = {
    "is a required property": "Required value",
    "is greater than the maximum": "should be less than or equal to",
    "Additional properties are not allowed": "strict decoding error: unknown field",
    "does not match": "should match",
    "is not one of": "Unsupported value",
    "is too long": "Too ",  # Too long (strings) or Too many (lists)
    "less than the minimum": "should be greater than or equal to",
    "should be non-empty": "should have at least 1 items",
}


def apiserver_words(reason: str) -> str:
    return next((words for phrase, words in APISERVER_WORDS.items() if phrase in reason), reason)


@pytest.mark.parametrize(("name", "document", "valid", "reason"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_repository_corpus_and_examples(kube_api: KubeApi, name: str, document: Json, valid: bool, reason: str) -> None:
    """kubectl apply of each document (kubectl sends fieldValidation=Strict) against the repository's CRDs."""
    kube_api._call(lambda: register_crds(kube_api.emulator, sorted((ROOT / "crds").glob("*.yaml"))))
    version = document["apiVersion"].split("/")[1]
    plural = {"SmtpRelay": "smtprelays", "SendingDomain": "sendingdomains"}[document["kind"]]
    body = copy.deepcopy(document)
    body["metadata"].pop("namespace", None)
    reply = send(
        kube_api, "POST", f"/apis/relayfleet.io/{version}/namespaces/default/{plural}", body, fieldValidation="Strict"
    )
    if valid:
        accepted(reply)
    else:
        assert reply.code in (400, 422), reply.body
        assert reason and apiserver_words(reason) in reply.message, (reason, reply.message)
