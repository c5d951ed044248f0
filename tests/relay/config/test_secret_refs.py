"""The one walk over a spec's Secret references, and `resolve` reading the material through it."""

from __future__ import annotations

import pytest

from smtp_relay.config.manifest import ManifestError, SecretData, parse_spec
from smtp_relay.config.resolved import resolve
from smtp_relay.config.secret_refs import SecretUse, secret_refs

SPEC = parse_spec(
    {
        "listeners": [{"name": "s", "port": 465, "tls": "implicit", "auth": "required"}],
        "tls": {"secretName": "t"},
        "clients": {"users": {"secretName": "u"}},
        "routing": {
            "default": {"smarthosts": [{"host": "h", "credentialsSecret": "c", "caSecret": "ca"}]},
            "routes": [{"match": {"senderDomains": ["x.example"]}, "smarthosts": [{"host": "b", "caSecret": "ca"}]}],
        },
    }
)
SECRETS = {
    "t": {"tls.crt": b"CERT", "tls.key": b"KEY"},
    "u": {"alice": b"pw\n"},
    "c": {"username": b"relay ", "password": b"secret"},
    "ca": {"ca.crt": b"CA"},
}


def secrets(data: dict[str, dict[str, bytes]]) -> dict[str, SecretData]:
    return {name: SecretData(name, keys) for name, keys in data.items()}


def test_every_reference_in_field_order() -> None:
    assert [(ref.field, ref.name, ref.use) for ref in secret_refs(SPEC)] == [
        ("spec.tls.secretName", "t", SecretUse.TLS),
        ("spec.clients.users.secretName", "u", SecretUse.USERS),
        ("spec.routing.default.smarthosts[0].credentialsSecret", "c", SecretUse.CREDENTIALS),
        ("spec.routing.default.smarthosts[0].caSecret", "ca", SecretUse.CA),
        ("spec.routing.routes[0].smarthosts[0].caSecret", "ca", SecretUse.CA),
    ]
    assert [ref.any_key for ref in secret_refs(SPEC)] == [False, True, False, False, False]
    assert secret_refs(parse_spec({})) == []


def test_resolve_reads_each_reference() -> None:
    config = resolve("r", "mail", SPEC, secrets(SECRETS))
    assert config.tls is not None and (config.tls.cert_pem, config.tls.key_pem) == (b"CERT", b"KEY")
    assert dict(config.users) == {"alice": "pw"}
    assert {name: (c.username, c.password) for name, c in config.credentials.items()} == {"c": ("relay", "secret")}
    assert dict(config.cas) == {"ca": b"CA"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**SECRETS, "c": {"username": b"relay"}},
            "spec.routing.default.smarthosts[0].credentialsSecret: Secret 'c' has no key password",
        ),
        (
            {k: v for k, v in SECRETS.items() if k != "ca"},
            "spec.routing.default.smarthosts[0].caSecret: Secret 'ca' not found",
        ),
    ],
)
def test_resolve_names_the_field_of_the_first_missing_piece(data: dict[str, dict[str, bytes]], message: str) -> None:
    with pytest.raises(ManifestError) as raised:
        resolve("r", "mail", SPEC, secrets(data))
    assert raised.value.problems == [message]


REDIS_SPEC = parse_spec(
    {
        "limits": {
            "backend": "redis",
            "redis": {"address": "redis:6379", "secretName": "rp", "tls": True, "caSecret": "rc"},
        }
    }
)


def test_the_limits_redis_password_and_ca_are_references() -> None:
    assert [(ref.field, ref.name, ref.keys, ref.use) for ref in secret_refs(REDIS_SPEC)] == [
        ("spec.limits.redis.secretName", "rp", ("password",), SecretUse.REDIS),
        ("spec.limits.redis.caSecret", "rc", ("ca.crt",), SecretUse.CA),
    ]
    local = parse_spec({"limits": {"backend": "local", "redis": {"address": "redis:6379", "secretName": "rp"}}})
    assert secret_refs(local) == []  # a Redis that is not used needs no Secret


def test_resolve_reads_the_redis_password_and_the_optional_username() -> None:
    config = resolve("r", "mail", REDIS_SPEC, secrets({"rp": {"password": b"s3cret\n"}, "rc": {"ca.crt": b"CA"}}))
    assert config.redis_credentials is not None
    assert (config.redis_credentials.username, config.redis_credentials.password) == ("", "s3cret")
    assert "s3cret" not in repr(config)
    named = resolve(
        "r", "mail", REDIS_SPEC, secrets({"rp": {"password": b"pw", "username": b"relay"}, "rc": {"ca.crt": b"CA"}})
    )
    assert named.redis_credentials is not None and named.redis_credentials.username == "relay"
    with pytest.raises(ManifestError) as raised:
        resolve("r", "mail", REDIS_SPEC, secrets({"rp": {"username": b"relay"}, "rc": {"ca.crt": b"CA"}}))
    assert raised.value.problems == ["spec.limits.redis.secretName: Secret 'rp' has no key password"]
