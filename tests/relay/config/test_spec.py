"""The spec models accept the sketch's documents and refuse bad ones naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smtp_relay.config.manifest import ManifestError, load_documents, load_file, parse_spec
from smtp_relay.config.units import parse_duration, parse_quantity

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_example_loads() -> None:
    manifest = load_file(ROOT / "examples" / "quickstart.yaml")
    assert manifest.name == "quickstart"
    assert manifest.spec.listeners[0].port == 2525
    assert manifest.spec.routing.default.kind == "capture"


def test_defaults_are_sensible() -> None:
    spec = parse_spec({})
    assert spec.policy.max_message_bytes == 25 * 1024 * 1024
    assert spec.queue.retry.schedule[0] == "1m"
    assert spec.routing.default.kind == "capture"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"listeners": [{"name": "a", "port": 25}, {"name": "b", "port": 70000}]},
            "spec.listeners[1].port: must be between 1 and 65535",
        ),
        ({"routing": {"default": {"mx": {}, "capture": {}}}}, "exactly one of smarthosts, mx or capture"),
        ({"policy": {"maxMessageSize": "12X"}}, "spec.policy.maxMessageSize: '12X' is not a size"),
        ({"bogus": 1}, "spec.bogus: unknown field"),
        ({"queue": {"retry": {"schedule": ["1x"]}}}, "spec.queue.retry.schedule[0]: '1x' is not a duration"),
        ({"listeners": [{"name": "a", "port": 465, "tls": "implicit"}]}, "tls.secretName"),
        ({"clients": {"allowedNetworks": ["10.0.0.0/33"]}}, "spec.clients.allowedNetworks[0]"),
        ({"listeners": [{"name": "a", "port": 25, "requireTLS": True}]}, "requireTLS needs tls"),
    ],
)
def test_bad_specs_name_the_field(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_spec(raw)
    assert expected in str(caught.value)


def test_units() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("5d") == 5 * 86400
    assert parse_quantity("25Mi") == 25 * 1024 * 1024
    assert parse_quantity("1k") == 1000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")


def test_an_unquoted_off_in_a_local_file_means_off() -> None:
    """YAML 1.1 reads `spf: off` as false; the loader takes it for "off", as it takes `disabled`."""
    text = """
apiVersion: relayfleet.io/v1alpha1
kind: SmtpRelay
metadata: {name: local}
spec:
  policy:
    ipAuthority: {spf: off}
    spam: {engine: off}
    virus: {engine: disabled}
"""
    policy = load_documents(list(yaml.safe_load_all(text))).spec.policy
    assert (policy.ip_authority.spf, policy.spam.engine, policy.virus.engine) == ("off", "off", "off")
    dumped = yaml.safe_dump(policy.model_dump(mode="json", by_alias=True))
    assert "spf: 'off'" in dumped, "written back quoted, so the relay's own config reads it as a string"
