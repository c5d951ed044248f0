"""The pure checks that degrade a relay: each names the field and the fix."""

from __future__ import annotations

from relay_operator.relays.render.common import Owner
from relay_operator.relays.validation import parse_or_problems, secret_problems, spec_problems
from smtp_relay.config.manifest import parse_spec
from smtp_relay.config.secret_refs import SecretRef, SecretUse, secret_refs

NS = "mail"
TLS_SPEC = {
    "listeners": [{"name": "smtps", "port": 465, "tls": "implicit"}],
    "tls": {"secretName": "outbound-tls"},
}


def test_secret_refs_name_fields() -> None:
    spec = parse_spec(
        {
            **TLS_SPEC,
            "routing": {"default": {"smarthosts": [{"host": "h", "credentialsSecret": "c", "caSecret": "ca"}]}},
        }
    )
    assert [(n.field, n.name, n.keys) for n in secret_refs(spec)] == [
        ("spec.tls.secretName", "outbound-tls", ("tls.crt", "tls.key")),
        ("spec.routing.default.smarthosts[0].credentialsSecret", "c", ("username", "password")),
        ("spec.routing.default.smarthosts[0].caSecret", "ca", ("ca.crt",)),
    ]


def test_secret_refs_cover_users_and_routes_in_field_order() -> None:
    spec = parse_spec(
        {
            "clients": {"users": {"secretName": "u"}},
            "routing": {
                "default": {"mx": {}},
                "routes": [{"match": {"senderDomains": ["x.example"]}, "smarthosts": [{"host": "b", "caSecret": "c"}]}],
            },
        }
    )
    assert secret_refs(spec) == [
        SecretRef("spec.clients.users.secretName", "u", (), SecretUse.USERS, any_key=True),
        SecretRef("spec.routing.routes[0].smarthosts[0].caSecret", "c", ("ca.crt",), SecretUse.CA),
    ]


def test_secret_problems_name_the_field_and_the_fix() -> None:
    refs = [
        SecretRef("spec.tls.secretName", "t", ("tls.crt", "tls.key"), SecretUse.TLS),
        SecretRef(
            "spec.routing.default.smarthosts[0].credentialsSecret", "c", ("username", "password"), SecretUse.CREDENTIALS
        ),
        SecretRef("spec.clients.users.secretName", "u", (), SecretUse.USERS, any_key=True),
    ]
    problems = secret_problems(refs, NS, {"t": None, "c": {"data": {"username": "eA=="}}, "u": {"data": {}}})
    assert [p.reason for p in problems] == ["SecretNotFound", "SecretKeyMissing", "SecretKeyMissing"]
    assert problems[0].message.startswith("spec.tls.secretName: Secret 't' not found in namespace mail; create it")
    assert "smarthosts[0].credentialsSecret: Secret 'c' has no key password" in problems[1].message
    assert "one key per user" in problems[2].message
    assert secret_problems(refs[:1], NS, {"t": {"data": {"tls.crt": "", "tls.key": ""}}}) == []


def test_spec_problems_catch_the_admin_port() -> None:
    owner = Owner(name="o", namespace=NS, uid="u", annotations={"relayfleet.io/service-type": "Bogus"})
    problems = spec_problems(owner, parse_spec({"listeners": [{"name": "admin", "port": 9025}]}))
    assert [p.reason for p in problems] == ["PortConflict", "PortConflict", "InvalidAnnotation"]
    assert problems[0].message.startswith("spec.listeners[0].port: 9025")


def test_a_spec_the_models_refuse_is_one_problem_per_line() -> None:
    spec, problems = parse_or_problems({"spec": {"listeners": [{"name": "a", "port": 25}, {"name": "a", "port": 26}]}})
    assert spec is None
    assert [p.reason for p in problems] == ["InvalidSpec"]
    assert "listener names must be unique" in problems[0].message
    assert parse_or_problems({"spec": {}}) == (parse_spec({}), [])


def test_a_spec_is_parsed_once_and_a_changed_one_again() -> None:
    """parse_or_problems is memoized on the spec's JSON: the same spec gives the same (frozen) object; any change,
    valid or not, is parsed anew, and the problems of an invalid one are still reported each time."""
    body = {"spec": {"replicas": 3, "routing": {"default": {"capture": {}}}}}
    first, problems = parse_or_problems(body)
    again, _ = parse_or_problems({"spec": {"routing": {"default": {"capture": {}}}, "replicas": 3}})
    assert first is not None and again is first and problems == []
    scaled, _ = parse_or_problems({"spec": {"replicas": 4, "routing": {"default": {"capture": {}}}}})
    assert scaled is not None and scaled.replicas == 4
    for _ in range(2):
        spec, problems = parse_or_problems({"spec": {"replicas": -1}})
        assert spec is None and [p.reason for p in problems] == ["InvalidSpec"], problems
        problems.clear()  # the caller's list: clearing it must not clear what the next caller gets
