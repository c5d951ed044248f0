"""Direct MX delivery through the relay's resolver (real NSD), and the capture Maildir."""

from __future__ import annotations

from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any

from bench.peers.smtp_sink import SmtpSink

from smtp_relay.delivery.capture import write_capture
from smtp_relay.model.envelope import Envelope, OutcomeKind
from smtp_relay.telemetry.metrics import RelayMetrics
from tests.peers.dns import DnsServer, ZoneSpec
from tests.relay.delivery.conftest import AiosmtpdUpstreamFactory, body, deliverer, message

ZONES: ZoneSpec = {
    # the preferred MX has an address where nothing listens on the MX port: delivery falls back to mx2
    "example.test": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.1"],
    "implicit.test": ["@ A 127.0.0.1"],
    "nullmx.test": ["@ MX 0 ."],
}


def mx_routing(port: int, require_tls: bool = False) -> dict[str, Any]:
    """A `spec.routing` that sends everything direct to MX, on `port` instead of 25."""
    return {"default": {"mx": {"port": port, "requireTLS": require_tls}}}


async def test_mx_delivery_per_domain_with_opportunistic_tls(
    aiosmtpd_upstream_factory: AiosmtpdUpstreamFactory,
    dns_server_factory: Callable[[ZoneSpec], DnsServer],
    tmp_path: Path,
) -> None:
    upstream = aiosmtpd_upstream_factory(tls="starttls")  # throwaway CA: opportunistic TLS must not verify
    dns_server = dns_server_factory(ZONES)
    d = deliverer(mx_routing(upstream.port), tmp_path, nameservers=[dns_server.nameserver()])
    rcpts = ["a@example.test", "b@Example.Test", "c@implicit.test", "d@nullmx.test", "e@nope.example.test"]
    try:
        outcomes = await d.deliver(message("s@sender.test", *rcpts), body(), rcpts)
    finally:
        await d.close()
    kinds = {r: (o.kind, o.code) for r, o in outcomes.items()}
    assert kinds == {
        "a@example.test": (OutcomeKind.DELIVERED, 250),
        "b@Example.Test": (OutcomeKind.DELIVERED, 250),
        "c@implicit.test": (OutcomeKind.DELIVERED, 250),
        "d@nullmx.test": (OutcomeKind.PERMANENT, 556),
        "e@nope.example.test": (OutcomeKind.PERMANENT, 550),
    }
    assert outcomes["a@example.test"].remote == f"127.0.0.1:{upstream.port}"
    by_rcpts = sorted(r.rcpt_tos for r in upstream.received)
    assert by_rcpts == [("a@example.test", "b@Example.Test"), ("c@implicit.test",)]  # one transaction per domain
    assert all(r.tls for r in upstream.received)


async def test_mx_require_tls(
    smtp_sink: SmtpSink, dns_server_factory: Callable[[ZoneSpec], DnsServer], tmp_path: Path
) -> None:
    """smtp-sink offers no STARTTLS (and speaks no TLS at all): requireTLS defers, the default goes plain."""
    nameservers = [dns_server_factory(ZONES).nameserver()]
    strict = deliverer(mx_routing(smtp_sink.port, require_tls=True), tmp_path, nameservers=nameservers)
    lenient = deliverer(mx_routing(smtp_sink.port), tmp_path, nameservers=nameservers)
    try:
        refused = await strict.deliver(message("s@sender.test", "a@implicit.test"), body(), ["a@implicit.test"])
        assert refused["a@implicit.test"].kind is OutcomeKind.TEMPORARY and smtp_sink.attempts() == 0
        assert "STARTTLS" in refused["a@implicit.test"].message
        plain = await lenient.deliver(message("s@sender.test", "a@implicit.test"), body(), ["a@implicit.test"])
        assert plain["a@implicit.test"].kind is OutcomeKind.DELIVERED
        assert await smtp_sink.async_wait_for(1) == 1  # in plain text: the sink has no TLS to offer
    finally:
        await strict.close()
        await lenient.close()


async def test_dns_down_defers(
    smtp_sink: SmtpSink, dns_server_factory: Callable[[ZoneSpec], DnsServer], tmp_path: Path
) -> None:
    dns_server = dns_server_factory(ZONES)
    # dns_lifetime: the production 5 s would only slow the test down
    d = deliverer(mx_routing(smtp_sink.port), tmp_path, nameservers=[dns_server.nameserver()], dns_lifetime=0.5)
    dns_server.stop()
    try:
        outcomes = await d.deliver(message("s@sender.test", "a@example.test"), body(), ["a@example.test"])
    finally:
        await d.close()
    assert outcomes["a@example.test"].kind is OutcomeKind.TEMPORARY and outcomes["a@example.test"].code == 451


def _maildir_files(path: Path) -> list[Path]:
    return sorted(path.iterdir()) if path.exists() else []


async def test_capture_route_files_ham_and_spam(tmp_path: Path) -> None:
    metrics = RelayMetrics()
    d = deliverer({"default": {"capture": {"folder": "caught"}}}, tmp_path, metrics=metrics)
    ham = body("ham")
    spam = body("spam", extra_headers="X-Spam-Flag: YES\r\nX-Spam-Score: 9.1\r\n")
    try:
        ham_out = await d.deliver(message("s@sender.test", "a@x.test", "b@y.test"), ham, ["a@x.test", "b@y.test"])
        spam_out = await d.deliver(message("s@sender.test", "c@x.test"), spam, ["c@x.test"])
    finally:
        await d.close()
    assert {o.kind for o in (*ham_out.values(), *spam_out.values())} == {OutcomeKind.DELIVERED}
    assert metrics.delivered.labels(route="capture")._value.get() == 3
    [ham_file] = _maildir_files(tmp_path / "caught" / "new")
    [spam_file] = _maildir_files(tmp_path / "caught" / ".Junk" / "new")
    assert (tmp_path / "caught" / ".Junk" / "maildirfolder").exists()
    assert _maildir_files(tmp_path / "caught" / "tmp") == [] and _maildir_files(tmp_path / "caught" / "cur") == []
    parsed = message_from_bytes(ham_file.read_bytes())
    assert parsed["Return-Path"] == "<s@sender.test>" and parsed["Subject"] == "ham"
    assert parsed.get_all("X-Original-To") == ["a@x.test", "b@y.test"]
    assert parsed.get_all("Delivered-To") == ["a@x.test", "b@y.test"]
    assert ham_file.read_bytes().endswith(ham)
    assert message_from_bytes(spam_file.read_bytes())["X-Original-To"] == "c@x.test"


def test_capture_names_are_unique_and_flag_only_counts_in_headers(tmp_path: Path) -> None:
    envelope = Envelope(mail_from="", rcpt_tos=("a@x.test",))
    body_mention = b"Subject: about flags\n\nX-Spam-Flag: YES appears in the body only\n"
    paths = {write_capture(tmp_path, "box", body_mention, envelope) for _ in range(50)}
    assert len(paths) == 50 and all(p.parent == tmp_path / "box" / "new" for p in paths)
    text = next(iter(paths)).read_bytes()
    assert text.startswith(b"Return-Path: <>\nX-Original-To: a@x.test\n")  # LF data gets LF headers
    folded = write_capture(tmp_path, "box", b"x-spam-flag:   yes\r\nSubject: s\r\n\r\nbody\r\n", envelope)
    assert folded.parent == tmp_path / "box" / ".Junk" / "new"
