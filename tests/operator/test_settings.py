"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import re

import pytest

from relay_operator.settings import Settings


def test_settings_defaults_and_env() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().relay_image == "ghcr.io/relayfleet/relay:0.1.0"
    settings = Settings.from_env(
        {
            "RELAYFLEET_RELAY_IMAGE": "r.example/relay:9",
            "RELAYFLEET_RESYNC_SECONDS": "15",
            "RELAYFLEET_TERMINATION_GRACE_SECONDS": "900",
            "RELAYFLEET_SERVICE_MONITOR": "true",
            "RELAYFLEET_NETWORK_POLICY": "0",
        }
    )
    assert settings == Settings(
        relay_image="r.example/relay:9",
        resync_seconds=15.0,
        termination_grace_seconds=900,
        service_monitor=True,
        network_policy=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAYFLEET_SERVICE_MONITOR": "maybe"}, "RELAYFLEET_SERVICE_MONITOR: not a boolean"),
        ({"RELAYFLEET_RESYNC_SECONDS": "soon"}, "RELAYFLEET_RESYNC_SECONDS"),
        ({"RELAYFLEET_RESYNC_SECONDS": "0"}, "must be > 0"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)
