"""The relay as a process, end to end: real SMTP clients, real upstreams, real signals.

Each test runs `smtp-relay run` as a child process with a manifest, talks SMTP to it on loopback and
checks what reached Postfix's smtp-sink or the capture Maildir.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import threading
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.peers.ports import free_port

from tests.harness.relay_proc import RELAY_BIN, relay_manifest
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[3]


def _message(subject: str, sender: str = "app@example.com", to: str = "user@example.net") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@example.com>"
    msg.set_content(f"body of {subject}\n" + "x" * 200)
    return msg.as_bytes(policy=SMTP)  # CRLF: the relay refuses bare LF (SMTP smuggling)


def _send(port: int, subject: str, rcpts: list[str] | None = None, sender: str = "app@example.com") -> str:
    """Send one message; return the relay's 250 reply text (it names the queue id)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender)
        for rcpt in rcpts or ["user@example.net"]:
            code, reply = client.rcpt(rcpt)
            assert code == 250, reply
        code, reply = client.data(_message(subject, sender))
        assert code == 250, reply
        return reply.decode()


def _smarthost_spec(listen_port: int, upstream_port: int, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "listeners": [{"name": "relay", "port": listen_port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "policy": {"spam": {"engine": "off"}},
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": upstream_port, "tls": "none"}]}},
        "queue": {"retry": {"schedule": ["1s"], "maxAge": "1h"}},
    }
    spec.update(extra)
    return spec


def test_bad_manifest_is_refused_with_field_path_and_exit_2(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(relay_manifest({"listeners": [{"name": "a", "port": 25}, {"name": "b", "port": 70000}]}))
    result = subprocess.run(
        [str(RELAY_BIN), "run", "-f", str(manifest), "--spool", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "spec.listeners[1].port: must be between 1 and 65535" in result.stderr
    assert not (tmp_path / "s").exists(), "nothing may start (or create a spool) for a refused manifest"


def test_missing_secret_is_refused_naming_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "relay.yaml"
    manifest.write_text(
        relay_manifest(
            {
                "listeners": [{"name": "a", "port": free_port()}],
                "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "credentialsSecret": "nope"}]}},
            }
        )
    )
    result = subprocess.run([str(RELAY_BIN), "check", "-f", str(manifest)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "spec.routing.default.smarthosts[0].credentialsSecret: Secret 'nope' not found" in result.stderr


def test_smarthost_credentials_over_cleartext_are_refused(tmp_path: Path) -> None:
    """tls: none with credentialsSecret would send AUTH PLAIN in clear text: refused unless allowInsecureAuth."""
    creds = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "up"},
        "stringData": {"username": "u", "password": "p"},
    }
    smarthost = {"host": "127.0.0.1", "port": free_port(), "tls": "none", "credentialsSecret": "up"}
    manifest = tmp_path / "relay.yaml"

    def check(host: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        spec = {"listeners": [{"name": "a", "port": free_port()}], "routing": {"default": {"smarthosts": [host]}}}
        manifest.write_text(relay_manifest(spec, creds))
        return subprocess.run(
            [str(RELAY_BIN), "check", "-f", str(manifest)], capture_output=True, text=True, timeout=30
        )

    refused = check(smarthost)
    assert refused.returncode == 2
    assert (
        "spec.routing.default.smarthosts[0]: credentialsSecret with tls none would send the password in clear text:"
        " use tls starttls or implicit (or allowInsecureAuth: true, for test networks only)"
    ) in refused.stderr
    assert check({**smarthost, "allowInsecureAuth": True}).returncode == 0
    assert check({**smarthost, "tls": "starttls"}).returncode == 0


def test_quickstart_captures_mail_into_maildir(relay_factory: Any) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    port = free_port()
    spec["listeners"][0]["port"] = port
    relay = relay_factory(spec)
    reply = _send(port, "quickstart", rcpts=["someone@example.com"])
    assert "queued as" in reply
    new = relay.spool / "capture" / "new"
    wait_for(lambda: new.is_dir() and any(new.iterdir()), timeout=10)
    captured = next(new.iterdir()).read_bytes()
    assert b"Subject: quickstart" in captured
    assert b"someone@example.com" in captured


def test_smarthost_delivery_reaches_smtp_sink(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    port = free_port()
    relay_factory(_smarthost_spec(port, sink.port))
    _send(port, "hello-sink", rcpts=["a@example.net", "b@example.org"])
    sink.wait_for(1, timeout=10)
    (arrived,) = sink.messages()
    assert arrived.sender == "app@example.com"
    assert sorted(arrived.recipients) == ["a@example.net", "b@example.org"]
    assert b"Subject: hello-sink" in arrived.data
    assert b"Received: from client.test" in arrived.data


def test_open_relay_attempt_is_refused(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port, clients={"allowedNetworks": ["10.0.0.0/8"]}))
    for rcpt in ["victim@example.net", "postmaster@example.org", "user%other@example.com", "x@[127.0.0.1]"]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("spammer.test")
            client.mail("spam@example.com")
            code, reply = client.rcpt(rcpt)
            assert code in (550, 554), (rcpt, code, reply)
            assert b"5.7.1" in reply
    # The relay took no message (no transaction reached DATA), so it has nothing it could send upstream.
    assert "smtp_relay_received_messages_total 0.0" in relay.http("/metrics")[1]
    assert relay.queue()["queue"]["total"] == 0
    assert sink.count() == 0


def test_kill_9_during_load_loses_no_accepted_message(relay_factory: Any, smtp_sink_factory: Any) -> None:
    """SIGKILL in the middle of a load, restart: every message that got a 250 arrives upstream."""
    sink = smtp_sink_factory()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port))
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 200:
            subject = f"load-{n}-{i}"
            try:
                _send(port, subject)
            except (OSError, smtplib.SMTPException, AssertionError):
                return  # the relay died under us: this message got no 250
            with lock:
                accepted.append(subject)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(accepted) >= 150, timeout=30)
    relay.kill()
    stop.set()
    for thread in threads:
        thread.join(15)
    relay.start()
    expected = set(accepted)

    def all_arrived() -> bool:
        got = {_subject(m.data) for m in sink.messages()}
        return expected <= got

    wait_for(all_arrived, timeout=60, interval=0.3)
    subjects = [_subject(m.data) for m in sink.messages()]
    duplicates = len(subjects) - len(set(subjects))
    print(f"kill -9: {len(expected)} accepted, {len(subjects)} delivered, {duplicates} duplicate(s)")
    assert expected <= set(subjects)


def _subject(data: bytes) -> str:
    for line in data.split(b"\r\n" if b"\r\n" in data else b"\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode().strip()
    return ""


def test_upstream_outage_then_recovery_delivers_everything(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port))
    for i in range(20):
        _send(port, f"outage-{i}")
    wait_for(lambda: relay.queue()["queue"].get("deferred", 0) >= 1, timeout=10)
    sink.start()
    sink.wait_for(20, timeout=30)
    assert {f"outage-{i}" for i in range(20)} <= {_subject(m.data) for m in sink.messages()}


def test_sigterm_drains_and_exits_zero_keeping_undelivered_mail(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port), grace=2.0)
    for i in range(5):
        _send(port, f"drain-{i}")
    assert relay.terminate(timeout=30) == 0
    # The drain ended at its grace, not with an empty queue: the upstream is down, all five are kept.
    assert "shutdown: 5 message(s) left in the spool for the next start" in relay.log.read_text()
    sink.start()
    relay.start()
    sink.wait_for(5, timeout=30)
    assert {f"drain-{i}" for i in range(5)} <= {_subject(m.data) for m in sink.messages()}


def test_http_endpoints_and_drain(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    port = free_port()
    relay = relay_factory(_smarthost_spec(port, sink.port))
    _send(port, "metrics-1")
    sink.wait_for(1, timeout=10)
    status, metrics = relay.http("/metrics")
    assert status == 200
    assert "smtp_relay_received_messages_total 1.0" in metrics
    assert 'smtp_relay_delivered_recipients_total{route="smarthosts"} 1.0' in metrics
    assert relay.http("/livez")[0] == 200
    assert relay.http("/readyz")[0] == 200
    status, body = relay.http("/drain", method="POST")
    assert status == 200 and '"draining": true' in body
    assert relay.http("/readyz")[0] == 503
    assert relay.http("/livez")[0] == 200
    with smtplib.SMTP(timeout=10) as client:
        code, _ = client.connect("127.0.0.1", port)
        assert code == 421


def test_reload_on_manifest_change_keeps_queue(relay_factory: Any, smtp_sink_factory: Any) -> None:
    sink = smtp_sink_factory()
    sink.stop()
    port = free_port()
    spec = _smarthost_spec(port, sink.port)
    relay = relay_factory(spec)
    _send(port, "before-reload", sender="app@example.com")
    spec["senders"] = {"allowedDomains": ["allowed.example"]}
    relay.manifest.write_text(relay_manifest(spec))
    relay.reload()

    def refused() -> bool:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            code, _ = client.mail("app@example.com")
            return code == 553

    wait_for(refused, timeout=10)
    _send(port, "after-reload", sender="ok@allowed.example")
    sink.start()
    sink.wait_for(2, timeout=30)
    assert {"before-reload", "after-reload"} <= {_subject(m.data) for m in sink.messages()}


def test_permanent_failure_bounces_once_and_spares_delivered_recipients(
    relay_factory: Any, smtp_sink_factory: Any
) -> None:
    """One recipient's upstream refuses with 5xx: one DSN to the sender, the other recipient is not resent."""
    good = smtp_sink_factory()
    refusing = smtp_sink_factory(hard_reject=["RCPT"])
    port = free_port()
    spec = _smarthost_spec(port, good.port)
    spec["routing"]["routes"] = [
        {
            "match": {"recipientDomains": ["bad.example"]},
            "smarthosts": [{"host": "127.0.0.1", "port": refusing.port, "tls": "none"}],
        },
    ]
    relay = relay_factory(spec)
    _send(port, "bounce-me", rcpts=["ok@good.example", "nobody@bad.example"])
    good.wait_for(2, timeout=20)
    # Once the queue is empty nothing is left to retry: whatever the sink holds now is all it ever gets.
    wait_for(lambda: relay.queue()["queue"]["total"] == 0, timeout=10)
    messages = good.messages()
    originals = [m for m in messages if _subject(m.data) == "bounce-me"]
    bounces = [m for m in messages if m.sender == ""]
    assert len(originals) == 1 and originals[0].recipients == ("ok@good.example",)
    assert len(bounces) == 1 and bounces[0].recipients == ("app@example.com",)
    report = bounces[0].email()
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert b"Final-Recipient: rfc822; nobody@bad.example" in bounces[0].data
    assert b"Action: failed" in bounces[0].data


def test_reload_when_the_mounted_manifest_changes_without_a_signal(relay_factory: Any, smtp_sink_factory: Any) -> None:
    """Kubernetes updates a mounted ConfigMap in place; the relay notices the change by itself."""
    sink = smtp_sink_factory()
    port = free_port()
    spec = _smarthost_spec(port, sink.port)
    relay = relay_factory(spec)
    spec["policy"]["maxRecipients"] = 1
    relay.manifest.write_text(relay_manifest(spec))

    def limited() -> bool:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("app@example.com")
            client.rcpt("a@example.net")
            code, _ = client.rcpt("b@example.net")
            return code == 452

    wait_for(limited, timeout=15, interval=0.5)
    assert "config reloaded" in relay.log.read_text()


def test_the_quick_start_sender_reaches_the_quickstart_relay(relay_factory: Any) -> None:
    """README's second step (`make send`) works against `make run`'s manifest, with nothing but the stdlib."""
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    port = free_port()
    spec["listeners"][0]["port"] = port
    relay = relay_factory(spec)
    sent = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "send_test_message.py"),
         "--port", str(port), "--spool", str(relay.spool)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "relay answered: 250" in sent.stdout
    assert "captured: " + str(relay.spool / "capture" / "new") in sent.stdout
    assert "Subject: hello from relayfleet's quick start" in sent.stdout
