"""`smtp-relay run -f` with SendingDomain documents and their key Secrets in the same file (local use, no cluster):
the relay signs with the domain's key and, with `senders.requireVerifiedDomain`, refuses other senders with a 550
naming the domain and what is missing; an operator-rendered document carries its verification in its status; a
pod whose config does not carry its domains yet defers with 451 instead of bouncing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.peers.ports import free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness.raw_smtp import command, raw_client, read_reply
from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.peers


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _spec(port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "relay", "port": port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "senders": {"requireVerifiedDomain": True},
        "policy": {"ipAuthority": {"spf": "off"}},
        "routing": {"default": {"capture": {}}},
    }


def _domain(name: str, domain: str, status: dict[str, Any] | None = None, **dkim: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "SendingDomain",
        "metadata": {"name": name},
        "spec": {"domain": domain, "relays": ["test"], "dkim": dkim},
    }
    if status is not None:
        doc["status"] = status
    return doc


def _mail(port: int, sender: str) -> tuple[bytes, bytes | None]:
    """(reply to MAIL, reply to the end of DATA or None when MAIL was refused)."""
    with raw_client(port, "127.0.0.1", timeout=30) as sock:
        assert read_reply(sock).startswith(b"220")
        assert command(sock, b"EHLO client.test").startswith(b"250")
        mail = command(sock, f"MAIL FROM:<{sender}>".encode())
        if not mail.startswith(b"250"):
            return mail, None
        assert command(sock, b"RCPT TO:<bob@example.net>").startswith(b"250")
        assert command(sock, b"DATA").startswith(b"354")
        sock.sendall(f"From: {sender}\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n.\r\n".encode())
        return mail, read_reply(sock)


def _captured(relay: RelayProcess) -> list[Path]:
    new = relay.spool / "capture" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def test_a_local_file_with_its_sending_domains_signs_and_enforces(relay_factory: Any) -> None:
    port = free_port()
    key = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "example-dkim"},
        "stringData": {"private.pem": _pem()},
    }
    unverified = _domain("pending", "pending.test", {"verifiedForSending": False,
                                                     "records": [{"purpose": "spf", "status": "Failed"}]})  # fmt: skip
    relay = relay_factory(
        _spec(port), _domain("example", "example.test", selector="local1", secretName="example-dkim"), key, unverified
    )
    mail, end = _mail(port, "alice@mail.example.test")
    assert mail.startswith(b"250") and end is not None and end.startswith(b"250"), (mail, end)
    (stored,) = wait_for(lambda: _captured(relay))
    head = stored.read_bytes().split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    signature = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    assert b"d=example.test" in signature and b"s=local1" in signature
    refused, _ = _mail(port, "bob@other.test")
    assert refused == b"550 5.7.1 Sender domain other.test has no SendingDomain for this relay\r\n"
    pending, _ = _mail(port, "carol@pending.test")
    assert (
        pending == b"550 5.7.1 Sender domain pending.test is not verified: its DNS records are not in place (spf)\r\n"
    )


def test_a_bad_sending_domain_is_refused_at_start_naming_the_field(relay_factory: Any) -> None:
    relay = relay_factory(_spec(free_port()), _domain("broken", "example.test", secretName="x"), start=False)
    relay.start(wait=False)
    assert relay.proc is not None and relay.proc.wait(20) == 2
    assert "SendingDomain broken: spec.dkim: secretName needs the selector" in relay.log.read_text()


def test_a_pod_without_its_domains_yet_defers(relay_factory: Any, tmp_path: Path) -> None:
    """In a pod (--secrets-dir) the operator's config says when it carries the domains; until then: 451."""
    port = free_port()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    relay_factory(_spec(port), args=["--secrets-dir", str(secrets)])
    deferred, _ = _mail(port, "alice@example.test")
    assert deferred == b"451 4.7.0 Sender domain verification status not known yet, try again later\r\n"
