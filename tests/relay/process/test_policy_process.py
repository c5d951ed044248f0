"""The policy chain end to end: swaks → the relay process → Postfix's smtp-sink, with real peers.

Each case asserts the reply swaks got, what arrived upstream (and with which headers), and what the
quarantine holds. SPF and DNSBL answers come from the project's own nsd; viruses from a real clamd
with the project's EICAR signature database.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bench.peers.ports import free_port

from tests.harness.waiting import wait_for
from tests.peers.clamd import eicar

pytestmark = pytest.mark.peers

ZONES = {
    "spf.test": [
        'pass TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        'fail TXT "v=spf1 ip4:192.0.2.1 -all"',
    ],
    "bl.test": ["1.0.0.127 A 127.0.0.2", '1.0.0.127 TXT "listed for testing"'],
}


def swaks(port: int, *args: str) -> tuple[int, str]:
    """Run swaks against the relay; return its exit code and the whole transcript."""
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--timeout", "15", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def replies(transcript: str) -> list[str]:
    """The server's reply lines (swaks marks them with <-, <~ (TLS) or <** (errors))."""
    return [line.split(" ", 1)[1].strip() for line in transcript.splitlines() if line.startswith(("<-", "<~", "<**"))]


USERS = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"}, "stringData": {"partner": "s3cret"}}
AUTH = ("--auth", "PLAIN", "--auth-user", "partner", "--auth-password", "s3cret")
"""A partner system that logs in from outside allowedNetworks: SPF applies to it."""


def _spec(listen: int, sink_port: int, nameserver: str, policy: dict[str, Any], trusted: bool) -> dict[str, Any]:
    return {
        # auth optional and (test only) allowed without TLS, so swaks can log in over plain text
        "listeners": [{"name": "relay", "port": listen, "auth": "optional", "allowInsecureAuth": True}],
        "clients": {
            "allowedNetworks": ["127.0.0.0/8"] if trusted else ["10.0.0.0/8"],
            "users": {"secretName": "users"},
        },
        "dns": {"nameservers": [nameserver]},
        "policy": policy,
        "routing": {"default": {"smarthosts": [{"host": "127.0.0.1", "port": sink_port, "tls": "none"}]}},
        "queue": {"retry": {"schedule": ["1s"], "maxAge": "1h"}},
    }


@pytest.fixture
def world(relay_factory: Any, smtp_sink_factory: Any, dns_server_factory: Any) -> Any:
    """Make a relay with a given policy, in front of a real smtp-sink, resolving through a real nsd."""
    sink = smtp_sink_factory()
    dns = dns_server_factory(ZONES)

    def make(policy: dict[str, Any], trusted: bool = True) -> tuple[Any, Any, int]:
        port = free_port()
        relay = relay_factory(_spec(port, sink.port, dns.nameserver(), policy, trusted), USERS)
        return relay, sink, port

    return make


def test_gtube_is_rejected_at_end_of_data(world: Any) -> None:
    _, sink, port = world({"spam": {"engine": "builtin"}})
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--body", gtube)
    assert code != 0
    assert any(r.startswith("550 5.7.1 Message rejected as spam") for r in replies(transcript)), transcript
    assert sink.count() == 0


def test_spammy_mail_is_tagged_so_the_recipient_files_it_as_spam(world: Any) -> None:
    _, sink, port = world({"spam": {"engine": "builtin", "tagAbove": 0.5, "rejectAbove": 50}}, trusted=False)
    # No Date and no Message-ID header: the builtin rules score it above 0.5.
    code, transcript = swaks(
        port,
        *AUTH,
        "--from",
        "a@pass.spf.test",
        "--to",
        "b@example.net",
        "--data",
        "From: a@pass.spf.test\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n",
    )
    assert code == 0, transcript
    sink.wait_for(1, timeout=15)
    arrived = sink.messages()[0].email()
    assert arrived["X-Spam-Flag"] == "YES"
    assert "MISSING_DATE" in arrived["X-Spam-Status"]
    assert "spf=pass" in arrived["Authentication-Results"]


def test_spf_fail_of_an_authenticated_partner_is_refused_at_mail(world: Any) -> None:
    _, sink, port = world({"ipAuthority": {"spf": "reject"}, "spam": {"engine": "off"}}, trusted=False)
    code, transcript = swaks(port, *AUTH, "--from", "a@fail.spf.test", "--to", "b@example.net")
    assert code != 0
    assert any(r.startswith("550 5.7.23") for r in replies(transcript)), transcript
    code, transcript = swaks(port, *AUTH, "--from", "a@pass.spf.test", "--to", "b@example.net")
    assert code == 0, transcript
    sink.wait_for(1, timeout=15)


def test_open_relay_is_refused_even_when_spf_would_pass(world: Any) -> None:
    _, sink, port = world({"ipAuthority": {"spf": "reject"}}, trusted=False)
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net")  # no AUTH
    assert code != 0
    assert any(r.startswith("554 5.7.1") for r in replies(transcript)), transcript
    assert sink.count() == 0


def test_dnsbl_listed_client_is_refused_at_connect(world: Any) -> None:
    _, sink, port = world({"ipAuthority": {"dnsbl": {"zones": ["bl.test"], "action": "reject"}}})
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net")
    assert code != 0
    assert any(r.startswith("554 5.7.1") and "bl.test" in r for r in replies(transcript)), transcript
    assert sink.count() == 0


def test_blocked_attachment_is_rejected(world: Any, tmp_path: Path) -> None:
    _, sink, port = world({"spam": {"engine": "off"}})
    attachment = tmp_path / "invoice.pdf.exe"
    attachment.write_bytes(b"MZ\x90\x00" + b"\x00" * 200)
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--attach", str(attachment))
    assert code != 0
    assert any(r.startswith("554 5.7.1") and "invoice.pdf.exe" in r for r in replies(transcript)), transcript
    assert sink.count() == 0


def test_virus_is_quarantined_then_released(world: Any, clamd: Any, tmp_path: Path) -> None:
    relay, sink, port = world(
        {
            "spam": {"engine": "off"},
            "virus": {"engine": "clamd", "address": clamd.address, "action": "quarantine"},
        }
    )
    attachment = tmp_path / "eicar.com.txt"
    attachment.write_bytes(eicar())
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--attach", str(attachment))
    assert code == 0, transcript  # the client is told 250: the message is held, not lost
    status, body = relay.http("/quarantine")
    assert status == 200
    (held,) = json.loads(body)["messages"]
    assert "virus" in held["reason"] and "EICAR" in held["reason"]
    assert sink.count() == 0
    status, body = relay.http(f"/quarantine/{held['id']}/release", method="POST")
    assert status == 200, body
    sink.wait_for(1, timeout=15)
    assert json.loads(relay.http("/quarantine")[1])["messages"] == []


def test_rate_limit_defers_the_message_over_the_limit(world: Any) -> None:
    _, sink, port = world({"spam": {"engine": "off"}, "rateLimits": [{"key": "senderDomain", "limit": 2, "per": "1m"}]})
    for _ in range(2):
        code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net")
        assert code == 0, transcript
    code, transcript = swaks(port, "--from", "c@pass.spf.test", "--to", "b@example.net")
    assert code != 0
    assert any(r.startswith("451 4.7.1") for r in replies(transcript)), transcript
    sink.wait_for(2, timeout=15)


def test_audit_mode_accepts_and_counts_what_it_would_have_refused(world: Any) -> None:
    relay, sink, port = world({"mode": "audit", "spam": {"engine": "builtin"}})
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--body", gtube)
    assert code == 0, transcript
    sink.wait_for(1, timeout=15)

    def counted() -> bool:
        metrics = relay.http("/metrics")[1]
        return any(
            line.startswith("smtp_relay_policy_audit_overrides_total")
            and 'check="spam"' in line
            and not line.endswith(" 0.0")
            for line in metrics.splitlines()
        )

    wait_for(counted, timeout=5)


@pytest.mark.parametrize("engine", ["rspamd", "spamassassin"])
def test_external_spam_engine_rejects_gtube(world: Any, engine: str, request: pytest.FixtureRequest) -> None:
    """The real rspamd / spamd score the message; above rejectAbove the relay answers 550 at end of DATA."""
    scanner = request.getfixturevalue("rspamd" if engine == "rspamd" else "spamd")
    _, sink, port = world({"spam": {"engine": engine, "address": scanner.address, "tagAbove": 5, "rejectAbove": 10}})
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--body", gtube)
    assert code != 0
    assert any(r.startswith("550 5.7.1 Message rejected as spam") for r in replies(transcript)), transcript
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--body", "Lunch at noon?")
    assert code == 0, transcript
    sink.wait_for(1, timeout=15)
    assert sink.count() == 1


def test_virus_is_rejected_and_a_down_scanner_defers(world: Any, clamd: Any, tmp_path: Path) -> None:
    attachment = tmp_path / "eicar.zip.txt"
    attachment.write_bytes(eicar())
    _, sink, port = world({"spam": {"engine": "off"}, "virus": {"engine": "clamd", "address": clamd.address}})
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--attach", str(attachment))
    assert code != 0
    assert any(r.startswith("554 5.7.1 Message rejected: virus found") for r in replies(transcript)), transcript

    down = f"127.0.0.1:{free_port()}"  # nothing listens there: clamd is "down"
    _, sink, port = world({"spam": {"engine": "off"}, "virus": {"engine": "clamd", "address": down}})
    code, transcript = swaks(port, "--from", "a@pass.spf.test", "--to", "b@example.net", "--body", "clean")
    assert code != 0
    assert any(r.startswith("451 4.3.0") for r in replies(transcript)), transcript  # the client keeps it, retries
    assert sink.count() == 0
