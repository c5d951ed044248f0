"""The console script's kopf command line."""

from __future__ import annotations

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
