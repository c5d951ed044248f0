"""The console script's kopf command line."""

from __future__ import annotations

import pytest

from relay_operator.cli import kopf_argv


def test_kopf_command_line() -> None:
    assert kopf_argv([]) == ["run", "-m", "relay_operator.handlers", "--all-namespaces"]
    assert kopf_argv(["-n", "mail", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]) == [
        "run",
        "-m",
        "relay_operator.handlers",
        "-n",
        "mail",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert kopf_argv(["--namespace=mail", "-v"])[-2:] == ["--namespace=mail", "-v"]


def test_peered_operators_get_a_priority_from_their_start_unless_given() -> None:
    """The chart passes --peering with replicaCount > 1; kopf needs distinct priorities: the older, the higher."""
    from relay_operator.cli import peering_priority

    older = kopf_argv(["--peering=rf-relayfleet-mail"], started=1_800_000_000.0, jitter=7)
    assert older[-1] == f"--priority={peering_priority(1_800_000_000.0, 7)}"
    newer = kopf_argv(["-P", "rf-relayfleet-mail"], started=1_800_000_000.5, jitter=999)
    assert int(older[-1].split("=")[1]) > int(newer[-1].split("=")[1])
    given = kopf_argv(["--peering=x", "--priority=5"], started=1.0, jitter=0)
    assert [a for a in given if a.startswith("--priority")] == ["--priority=5"]
    assert not [a for a in kopf_argv(["--standalone"]) if a.startswith("--priority")]
    with pytest.raises(ValueError, match="jitter must be within 0-999"):
        peering_priority(1.0, 1000)
