"""Pure parts of reconciliation: the owned-fields merge and the checks that degrade a relay."""

from __future__ import annotations

from relay_operator.merge import covers, merge_patch
from relay_operator.relays.reconcile import SecretNeed, secret_needs, secret_problems, spec_problems
from relay_operator.relays.render import Owner
from smtp_relay.config.manifest import parse_spec

NS = "mail"
TLS_SPEC = {
    "listeners": [{"name": "smtps", "port": 465, "tls": "implicit"}],
    "tls": {"secretName": "outbound-tls"},
}

# -- merge ---------------------------------------------------------------------------------------


def test_covers_ignores_fields_we_do_not_render() -> None:
    desired = {"spec": {"ports": [{"name": "a", "port": 25}], "type": "ClusterIP"}}
    observed = {"spec": {"ports": [{"name": "a", "port": 25, "nodePort": 30025}], "type": "ClusterIP", "x": 1}}
    assert covers(desired, observed)
    assert merge_patch(desired, observed) is None


def test_merge_patch_keeps_foreign_fields_inside_list_items() -> None:
    desired = {"spec": {"ports": [{"name": "a", "port": 26}, {"name": "b", "port": 27}]}}
    observed = {
        "metadata": {"labels": {"mine": "x"}},
        "spec": {"ports": [{"name": "a", "port": 25, "nodePort": 30025}], "clusterIP": "10.0.0.1"},
    }
    patch = merge_patch(desired, observed)
    assert patch == {"spec": {"ports": [{"name": "a", "port": 26, "nodePort": 30025}, {"name": "b", "port": 27}]}}


def test_covers_is_strict_about_types_and_lengths() -> None:
    assert not covers({"a": True}, {"a": 1})
    assert not covers({"a": [1]}, {"a": [1, 2]})
    assert covers({"a": 1}, {"a": 1.0})


# -- pure validation -----------------------------------------------------------------------------


def test_secret_needs_name_fields() -> None:
    spec = parse_spec(
        {
            **TLS_SPEC,
            "routing": {"default": {"smarthosts": [{"host": "h", "credentialsSecret": "c", "caSecret": "ca"}]}},
        }
    )
    assert [(n.field, n.name, n.keys) for n in secret_needs(spec)] == [
        ("spec.tls.secretName", "outbound-tls", ("tls.crt", "tls.key")),
        ("spec.routing.default.smarthosts[0].credentialsSecret", "c", ("username", "password")),
        ("spec.routing.default.smarthosts[0].caSecret", "ca", ("ca.crt",)),
    ]


def test_secret_problems_name_the_field_and_the_fix() -> None:
    needs = [
        SecretNeed("spec.tls.secretName", "t", ("tls.crt", "tls.key")),
        SecretNeed("spec.routing.default.smarthosts[0].credentialsSecret", "c", ("username", "password")),
        SecretNeed("spec.clients.users.secretName", "u", (), any_key=True),
    ]
    problems = secret_problems(needs, NS, {"t": None, "c": {"data": {"username": "eA=="}}, "u": {"data": {}}})
    assert [p.reason for p in problems] == ["SecretNotFound", "SecretKeyMissing", "SecretKeyMissing"]
    assert problems[0].message.startswith("spec.tls.secretName: Secret 't' not found in namespace mail; create it")
    assert "smarthosts[0].credentialsSecret: Secret 'c' has no key password" in problems[1].message
    assert "one key per user" in problems[2].message
    assert secret_problems(needs[:1], NS, {"t": {"data": {"tls.crt": "", "tls.key": ""}}}) == []


def test_spec_problems_catch_the_admin_port() -> None:
    owner = Owner(name="o", namespace=NS, uid="u", annotations={"relayfleet.io/service-type": "Bogus"})
    problems = spec_problems(owner, parse_spec({"listeners": [{"name": "admin", "port": 9025}]}))
    assert [p.reason for p in problems] == ["PortConflict", "PortConflict", "InvalidAnnotation"]
    assert problems[0].message.startswith("spec.listeners[0].port: 9025")
