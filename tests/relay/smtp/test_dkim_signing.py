"""DKIM signing at the end of the hand-off, checked by an independent verifier: messages go through a real
RelayServer on 127.0.0.1 and the stored bytes are verified by OpenDKIM, which looks the keys up in a real
nsd (tests/peers/opendkim.py). OpenDKIM 2.11 verifies both rsa-sha256 and ed25519-sha256."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_relay.cleanup.dkim_keys import DkimKeyError, SigningKey
from smtp_relay.cleanup.headers import policy_headers
from smtp_relay.config.domains import DkimKey, SendingDomainConfig, SendingDomains
from smtp_relay.config.spec import SmtpRelaySpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.quarantine import QuarantineStore
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.peers.opendkim import DkimWorld, private_pem
from tests.relay.smtp.conftest import Relay, StartRelay, make_config

pytestmark = pytest.mark.peers

LOCAL = {"clients": {"allowedNetworks": ["127.0.0.0/8"]}}
BOTH = {("rsa-sha256", DkimWorld.RSA_SELECTOR), ("ed25519-sha256", DkimWorld.ED_SELECTOR)}


def _message(
    sender: str = "Alice <alice@example.test>", body: str = "Hello Bob,\n\nthe report is attached.\n"
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Bob <bob@example.org>"
    msg["Subject"] = "Quarterly report"
    msg["Date"] = "Wed, 02 Dec 2026 09:00:00 +0000"
    msg["Message-ID"] = "<q4@example.test>"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _send(port: int, message: bytes, sender: str = "alice@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        client.sendmail(sender, ["bob@example.org"], message)


async def _relayed(relay: Relay, message: bytes) -> bytes:
    """Send `message` through the relay; the bytes it committed to the spool."""
    before = len(relay.sink.messages)
    await asyncio.to_thread(_send, relay.port(), message)
    assert len(relay.sink.messages) == before + 1
    return relay.sink.messages[-1][1]


def _verdicts(world: DkimWorld, data: bytes) -> set[tuple[str, str, str]]:
    return {(v.result, v.algorithm, v.selector) for v in world.verifier.verify_message(data)}


def _passes(world: DkimWorld, data: bytes) -> set[tuple[str, str]]:
    return {(alg, sel) for result, alg, sel in _verdicts(world, data) if result == "pass"}


async def test_signed_with_rsa_and_ed25519_and_opendkim_passes_both(
    start_relay: StartRelay, dkim_world: DkimWorld
) -> None:
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    data = await _relayed(relay, _message())
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    assert _passes(dkim_world, data) == BOTH
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        assert relay.sample("smtp_relay_dkim_signed_messages_total", domain="example.test", algorithm=algorithm) == 1


@pytest.mark.parametrize(
    ("original", "changed"),
    [
        (b"Subject: Quarterly report", b"Subject: Quarterly r3port"),
        (b"the report is attached.", b"the report is attacked."),
        (b"From: Alice <alice@example.test>", b"From: Mallory <alice@example.test>"),
    ],
    ids=["subject", "body", "from"],
)
async def test_a_changed_header_or_body_fails_verification(
    start_relay: StartRelay, dkim_world: DkimWorld, original: bytes, changed: bytes
) -> None:
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    data = await _relayed(relay, _message())
    assert original in data
    verdicts = _verdicts(dkim_world, data.replace(original, changed))
    assert {(alg, sel) for _, alg, sel in verdicts} == BOTH
    assert {result for result, _, _ in verdicts} == {"fail"}


@pytest.mark.parametrize("added", [b"From: Mallory <mallory@evil.test>\r\n", b"Subject: Urgent: wire money\r\n"])
async def test_a_second_from_or_subject_cannot_be_added(
    start_relay: StartRelay, dkim_world: DkimWorld, added: bytes
) -> None:
    """Over-signing: h= lists From (and a present Subject) once more than they occur."""
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains(ed_key=False))
    data = await _relayed(relay, _message())
    assert _passes(dkim_world, data) == {("rsa-sha256", DkimWorld.RSA_SELECTOR)}
    assert _passes(dkim_world, added + data) == set()


async def test_a_subdomain_sender_is_signed_by_its_parent_sending_domain(
    start_relay: StartRelay, dkim_world: DkimWorld
) -> None:
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    data = await _relayed(relay, _message(sender="News <news@mail.example.test>"))
    assert b"d=example.test;" in data.partition(b"\r\n\r\n")[0]
    assert _passes(dkim_world, data) == BOTH


@pytest.mark.parametrize(
    ("verified", "sender", "reason"),
    [(False, "alice@example.test", "unverified"), (True, "carol@other.test", "no_sending_domain")],
)
async def test_no_signature_without_a_verified_sending_domain(
    start_relay: StartRelay, dkim_world: DkimWorld, verified: bool, sender: str, reason: str
) -> None:
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains(verified=verified))
    data = await _relayed(relay, _message(sender=sender))
    assert b"DKIM-Signature" not in data
    assert relay.sample("smtp_relay_dkim_unsigned_messages_total", reason=reason) == 1


def _engine(tmp_path: Path, metrics: RelayMetrics, **policy: object) -> PolicyEngine:
    spec = SmtpRelaySpec.model_validate({"policy": {"ipAuthority": {"spf": "off"}, **policy}})
    return PolicyEngine(
        spec,
        make_resolver(spec.dns),
        hostname="relay.test",
        metrics=PolicyMetrics(metrics.registry),
        quarantine=QuarantineStore(tmp_path / "quarantine"),
        compose_headers=policy_headers,
    )


async def test_the_signature_is_made_last_above_the_policy_headers_and_received(
    start_relay: StartRelay, dkim_world: DkimWorld, tmp_path: Path
) -> None:
    metrics = RelayMetrics()
    policy = _engine(tmp_path, metrics, spam={"engine": "builtin"})
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains(), policy=policy, metrics=metrics)
    data = await _relayed(relay, _message())
    names = [line.split(b":")[0] for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n") if line[:1] not in b" \t"]
    assert names[:2] == [b"DKIM-Signature", b"DKIM-Signature"]
    assert b"X-Spam-Status" in names and b"Received" in names
    assert names.index(b"X-Spam-Status") < names.index(b"Received")
    assert _passes(dkim_world, data) == BOTH


async def test_a_quarantined_message_is_not_signed(
    start_relay: StartRelay, dkim_world: DkimWorld, tmp_path: Path
) -> None:
    metrics = RelayMetrics()
    policy = _engine(tmp_path, metrics, spam={"engine": "off"}, attachments={"action": "quarantine"})
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains(), policy=policy, metrics=metrics)
    msg = EmailMessage()
    msg["From"] = "alice@example.test"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "invoice"
    msg.set_content("see attachment")
    msg.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream", filename="invoice.exe")
    await asyncio.to_thread(_send, relay.port(), msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    assert relay.sink.messages == []
    held = list((tmp_path / "quarantine").rglob("*.eml"))
    assert len(held) == 1
    assert b"invoice.exe" in held[0].read_bytes()
    assert b"DKIM-Signature" not in held[0].read_bytes()
    assert relay.sample("smtp_relay_dkim_signed_messages_total", domain="example.test", algorithm="rsa-sha256") == 0


async def test_a_big_message_is_signed_off_the_event_loop_and_verifies(
    start_relay: StartRelay, dkim_world: DkimWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    original = SigningKey.sign_digest

    def recording(self: SigningKey, digest: bytes) -> bytes:
        import threading

        threads.append(threading.current_thread().name)
        return original(self, digest)

    monkeypatch.setattr(SigningKey, "sign_digest", recording)
    relay = await start_relay(
        {**LOCAL, "policy": {"maxMessageSize": "4Mi"}}, sending_domains=dkim_world.sending_domains()
    )
    data = await _relayed(relay, _message(body="a line of a long report, with  double  spaces \n" * 30_000))
    assert len(data) > 1_000_000
    assert _passes(dkim_world, data) == BOTH
    assert any(name.startswith("dkim-rsa") for name in threads)  # RSA in the signing threads


async def test_our_signature_is_not_repeated_and_others_are_kept(
    start_relay: StartRelay, dkim_world: DkimWorld
) -> None:
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    once = await _relayed(relay, _message())
    twice = await _relayed(relay, once)  # a message that comes back through the fleet
    assert twice.count(b"DKIM-Signature:") == 2
    assert relay.sample("smtp_relay_dkim_unsigned_messages_total", reason="already_signed") == 1
    assert _passes(dkim_world, twice) == BOTH
    foreign = b"DKIM-Signature: v=1; a=rsa-sha256; d=esp.test; s=x; h=from; bh=AAAA; b=AAAA\r\n" + _message()
    data = await _relayed(relay, foreign)
    assert data.count(b"DKIM-Signature:") == 3 and b"d=esp.test; s=x;" in data
    assert _passes(dkim_world, data) == BOTH


async def test_a_failing_signature_is_logged_counted_and_the_message_goes_on(
    start_relay: StartRelay, dkim_world: DkimWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = SigningKey.sign_digest

    def broken_rsa(self: SigningKey, digest: bytes) -> bytes:
        if self.algorithm == "rsa-sha256":
            raise RuntimeError("hardware security module unplugged")
        return original(self, digest)

    monkeypatch.setattr(SigningKey, "sign_digest", broken_rsa)
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    with caplog.at_level(logging.ERROR, logger="smtp_relay.cleanup.dkim"):
        data = await _relayed(relay, _message())
    assert _passes(dkim_world, data) == {("ed25519-sha256", DkimWorld.ED_SELECTOR)}
    assert relay.sample("smtp_relay_dkim_signing_failures_total", domain="example.test", algorithm="rsa-sha256") == 1
    assert "signing failed d=example.test s=rsa2026 a=rsa-sha256" in caplog.text
    assert "hardware security module unplugged" in caplog.text


async def test_a_bad_key_refuses_the_config_and_a_reload_keeps_the_old_signer(
    start_relay: StartRelay, dkim_world: DkimWorld
) -> None:
    wrong = SendingDomains(
        {
            "example.test": SendingDomainConfig(
                "example.test", True, (DkimKey("rsa2026", "rsa-sha256", private_pem(dkim_world.ed_key)),)
            )
        }
    )
    with pytest.raises(DkimKeyError, match=r"SendingDomain example\.test selector 'rsa2026'.*needs an RSA key"):
        await start_relay(LOCAL, sending_domains=wrong)
    relay = await start_relay(LOCAL, sending_domains=dkim_world.sending_domains())
    spec = {**LOCAL, "listeners": [{"name": "smtp", "port": relay.port()}]}
    with pytest.raises(DkimKeyError):
        relay.server.update(make_config(spec, sending_domains=wrong))
    assert _passes(dkim_world, await _relayed(relay, _message())) == BOTH
