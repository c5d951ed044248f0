"""The domain controller's settings: the resolver, the recheck interval and the outage grace from the env."""

from __future__ import annotations

import pytest

from relay_operator.settings import Settings


def test_domain_settings_from_env() -> None:
    assert Settings().nameservers() == [] and Settings().domain_recheck_seconds == 300
    settings = Settings.from_env(
        {
            "RELAYFLEET_DNS_NAMESERVERS": "127.0.0.1:5353, [::1]:53,9.9.9.9",
            "RELAYFLEET_DOMAIN_RECHECK_SECONDS": "60",
            "RELAYFLEET_DNS_OUTAGE_GRACE_SECONDS": "7200",
        }
    )
    assert settings.nameservers() == ["127.0.0.1:5353", "[::1]:53", "9.9.9.9"]
    assert (settings.domain_recheck_seconds, settings.dns_outage_grace_seconds) == (60, 7200)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"RELAYFLEET_DNS_NAMESERVERS": "dns.example:53"}, "RELAYFLEET_DNS_NAMESERVERS: 'dns.example:53'"),
        ({"RELAYFLEET_DOMAIN_RECHECK_SECONDS": "0"}, "RELAYFLEET_DOMAIN_RECHECK_SECONDS must be > 0"),
        ({"RELAYFLEET_DNS_OUTAGE_GRACE_SECONDS": "-1"}, "RELAYFLEET_DNS_OUTAGE_GRACE_SECONDS >= 0"),
    ],
)
def test_bad_domain_settings_name_their_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[")) as caught:
        Settings.from_env(env)
    assert error in str(caught.value)
