"""The `helm test` hook's script (charts/relayfleet/files/relay-test.py) against a real relay process: the chart's
example SmtpRelay, rendered by helm, run locally with its listener on a free port of 127.0.0.1 standing in for
the relay's Service, and the admin port standing in for the pods behind the headless Service."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from bench.peers.ports import free_port

from tests.chart.helm import CHART, needs_helm, one, render
from tests.harness.relay_proc import RelayProcess

pytestmark = needs_helm
SCRIPT = CHART / "files" / "relay-test.py"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def example_spec(port: int, *sets: str) -> dict[str, Any]:
    relay = one(render("relay.enabled=true", f"relay.port={port}", "relay.allowedNetworks={127.0.0.0/8}", *sets),
                "SmtpRelay")  # fmt: skip
    spec: dict[str, Any] = relay["spec"]
    return spec


def test_the_message_is_sent_and_its_capture_delivery_seen(relay_factory: Callable[..., RelayProcess]) -> None:
    port = free_port()
    relay = relay_factory(example_spec(port))
    result = run_script(f"--smtp=127.0.0.1:{port}", "--pods=127.0.0.1", f"--admin-port={relay.http_port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted with 250" in result.stdout and "delivered to capture" in result.stdout
    assert relay.metric("smtp_relay_delivered_recipients_total", route="capture") == 1.0
    captured = list((relay.spool / "capture" / "new").iterdir())
    assert len(captured) == 1 and b"relayfleet helm test" in captured[0].read_bytes()


def test_a_message_accepted_but_not_delivered_fails_the_test(relay_factory: Callable[..., RelayProcess]) -> None:
    """The relay takes the message (250) but its smarthost is down: no capture delivery, so exit 1."""
    port, dead = free_port(), free_port()
    spec = example_spec(port)
    spec["routing"] = {"default": {"smarthosts": [{"host": "127.0.0.1", "port": dead}]}}
    relay = relay_factory(spec)
    result = run_script(
        f"--smtp=127.0.0.1:{port}", "--pods=127.0.0.1", f"--admin-port={relay.http_port}", "--timeout=4"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "accepted with 250" in result.stdout and "no relay pod reported a capture delivery" in result.stderr


@pytest.mark.parametrize(
    ("pods", "refusal"),
    [("no-such-relay-pods.invalid", "no relay pod behind no-such-relay-pods.invalid answered /metrics")],
)
def test_no_reachable_relay_fails_with_the_reason(pods: str, refusal: str) -> None:
    result = run_script(f"--smtp=127.0.0.1:{free_port()}", f"--pods={pods}", "--timeout=2")
    assert result.returncode == 1 and refusal in result.stderr, result.stderr
