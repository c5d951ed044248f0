"""The admin API of a real relay process: who may read the queue, drain, undrain and touch the quarantine.

Health and metrics answer anyone (probes, Prometheus); every route that reads mail data or changes state
needs the bearer token of `--admin-token-file` (issue: an open admin port let anyone release a message
held for malware or drain a relay for good).
"""

from __future__ import annotations

import json
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bench.peers.ports import closed_port, free_port

from smtp_relay.config.source import config_digest
from tests.harness.relay_proc import RELAY_BIN, RelayProcess, relay_manifest
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.peers

PROTECTED = [
    ("GET", "/queue"),
    ("POST", "/drain"),
    ("POST", "/undrain"),
    ("DELETE", "/drain"),
    ("GET", "/quarantine"),
    ("GET", "/quarantine/some-id"),
    ("POST", "/quarantine/some-id/release"),
    ("DELETE", "/quarantine/some-id"),
    ("POST", "/handoff"),
]


def _spec(port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "relay", "port": port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "policy": {"spam": {"engine": "off"}},
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": closed_port(), "tls": "none"}]}},
    }


def _banner(port: int) -> int:
    with smtplib.SMTP(timeout=10) as client:
        code, _ = client.connect("127.0.0.1", port)
        return code


@pytest.mark.parametrize("workers", [1, 2])
def test_protected_routes_need_the_token_and_health_does_not(relay_factory: Any, workers: int) -> None:
    relay: RelayProcess = relay_factory(_spec(free_port()), args=["--workers", str(workers)])
    for method, path in PROTECTED:
        status, body = relay.http(path, method=method, token=None)
        assert status == 401 and "missing bearer token" in body, (path, status, body)
        status, body = relay.http(path, method=method, token="not-the-token-not-the-token")
        assert status == 401 and "wrong bearer token" in body, (path, status, body)
    assert relay.http("/readyz", token=None) == (200, "ready\n"), "no refused request drained the relay"
    assert relay.http("/livez", token=None)[0] == 200
    assert relay.http("/metrics", token=None)[0] == 200
    assert relay.queue()["ready"] is True  # with the token
    assert relay.http("/quarantine")[0] == 200
    assert relay.http("/quarantine/some-id")[0] == 404
    assert relay.admin_token not in relay.log.read_text(), "the token is never logged"


def test_drain_is_reversible_and_a_forgotten_drain_fails_liveness(relay_factory: Any) -> None:
    port = free_port()
    relay: RelayProcess = relay_factory(_spec(port), args=["--drain-liveness-timeout", "1.5"])
    assert relay.http("/drain", method="POST")[0] == 200
    assert relay.http("/readyz")[0] == 503
    assert _banner(port) == 421
    status, body = relay.http("/livez")
    assert status == 200 and body.startswith("ok: drained by POST /drain since "), body
    status, body = relay.http("/undrain", method="POST")
    assert status == 200 and '"draining": false' in body
    assert relay.http("/readyz") == (200, "ready\n")
    assert relay.http("/livez") == (200, "ok\n")
    assert _banner(port) == 220

    assert relay.http("/drain", method="POST")[0] == 200
    wait_for(lambda: relay.http("/livez")[0] == 503, timeout=10)
    status, body = relay.http("/livez")
    assert "over the drain liveness timeout of 1.5 s" in body and "POST /undrain resumes" in body
    assert relay.http("/drain", method="DELETE")[0] == 200  # the other spelling of undrain
    assert relay.http("/livez")[0] == 200 and _banner(port) == 220


def test_without_a_token_file_the_protected_routes_are_forbidden(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    manifest = tmp_path / "relay.yaml"
    manifest.write_text(relay_manifest(_spec(port)))
    probe = RelayProcess(tmp_path, manifest, http_port)  # only for its http(); this relay has no token file
    command = [str(RELAY_BIN), "run", "-f", str(manifest), "--spool", str(tmp_path / "spool"), "--http-port"]
    with (tmp_path / "relay.log").open("wb") as log:
        proc = subprocess.Popen([*command, str(http_port)], stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            return probe.http("/readyz", token=None)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=15)
        status, body = probe.http("/drain", method="POST", token="x" * 32)
        assert status == 403 and "started without --admin-token-file" in body
        assert probe.http("/queue", token=None)[0] == 403
        assert probe.http("/readyz", token=None)[0] == 200, "the refused drain did not happen"
    finally:
        proc.kill()
        proc.wait(10)


def test_a_short_or_missing_token_file_is_refused_at_start(tmp_path: Path) -> None:
    manifest = tmp_path / "relay.yaml"
    manifest.write_text(relay_manifest(_spec(free_port())))
    short = tmp_path / "short"
    short.write_text("abc\n")
    for token_file, why in [(short, "at least 16 characters"), (tmp_path / "absent", "No such file")]:
        done = subprocess.run(
            [
                str(RELAY_BIN),
                "run",
                "-f",
                str(manifest),
                "--spool",
                str(tmp_path / "spool"),
                "--admin-token-file",
                str(token_file),
                "--http-port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        assert why in done.stderr and "abc" not in done.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_queue_figures_carry_the_counters_the_operator_turns_into_rates(relay_factory: Any, workers: int) -> None:
    """/queue: depth and ages, plus totals since start and the quarantine's size (summed over workers, the
    shared quarantine counted once), which the operator samples into status.queue."""
    port = free_port()
    spec = {**_spec(port), "routing": {"default": {"capture": {}}}}
    relay: RelayProcess = relay_factory(spec, args=["--workers", str(workers)])
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nhello\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        assert client.rcpt("not an address")[0] >= 500
    queue = wait_for(lambda: (q := relay.queue()["queue"])["delivered_total"] == 3 and q)
    assert queue["received_total"] == 3 and queue["total"] == 0
    assert queue["rejected_total"] >= 1 and queue["bounced_total"] == 0 and queue["delivery_failures_total"] == 0
    assert queue["quarantined"] == 0
    # which config it runs: the digest the operator computes from the ConfigMap it rendered (ConfigApplied)
    before = relay.queue()["config"]["digest"]
    assert before == config_digest(relay.manifest.read_bytes())
    relay.manifest.write_text(relay.manifest.read_text() + "# a new ConfigMap version\n")
    relay.reload()
    after = config_digest(relay.manifest.read_bytes())
    assert after != before
    wait_for(lambda: relay.queue()["config"]["digest"] == after, timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
def test_drain_answers_the_sessions_still_open(relay_factory: Any, workers: int) -> None:
    """A transaction begun before the drain can still commit a message after /drain answered an empty queue:
    the answer counts the open SMTP sessions, so the operator waits for them too."""
    port = free_port()
    relay: RelayProcess = relay_factory(_spec(port), args=["--workers", str(workers)])
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("test")
        client.mail("a@example.com")  # began before the drain: its DATA may still be accepted
        status, body = relay.http("/drain", method="POST")
        answer = json.loads(body)
        assert status == 200 and answer["queue"]["total"] == 0 and answer["sessions"] == 1, answer
    wait_for(lambda: json.loads(relay.http("/drain", method="POST")[1])["sessions"] == 0, timeout=10)
