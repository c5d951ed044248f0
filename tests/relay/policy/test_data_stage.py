"""End of DATA through the engine: headers, builtin spam score, attachments, quarantine, clamd, spam engines."""

from __future__ import annotations

import threading
from email.message import Message
from typing import Any

import pytest
from bench.peers.ports import closed_port
from prometheus_client import CollectorRegistry

from smtp_relay.policy import data_stage
from smtp_relay.policy.attachments import AttachmentFinding
from smtp_relay.policy.verdict import Action
from tests.harness.metrics import sample
from tests.peers.clamd import Clamd, eicar
from tests.relay.policy.samples import zip_of
from tests.relay.policy.transactions import GTUBE, EngineFactory, envelope, facts, message

pytestmark = pytest.mark.peers


async def test_clean_mail_gets_authentication_results_and_no_spam_flag(make_engine: EngineFactory) -> None:
    engine = make_engine()
    fx = facts(mail_from="alice@pass.spf.test")
    assert (await engine.on_mail(fx)).action is Action.ACCEPT
    decision = await engine.on_data(fx, message(), envelope())
    assert decision.verdict.action is Action.ACCEPT and decision.quarantine_reason is None
    headers = dict(decision.add_headers)
    assert "X-Spam-Flag" not in headers
    assert headers["Authentication-Results"] == "relay.test; spf=pass smtp.mailfrom=alice@pass.spf.test"
    assert headers["X-Spam-Status"].startswith("No, score=0.0 required=5.0")


async def test_spf_fail_in_tag_mode_flags_the_message_as_spam(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "tag"}})
    fx = facts(mail_from="alice@fail.spf.test")
    assert (await engine.on_mail(fx)).action is Action.TAG
    decision = await engine.on_data(fx, message(), envelope("alice@fail.spf.test"))
    assert decision.verdict.action is Action.ACCEPT
    headers = dict(decision.add_headers)
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"].startswith("Yes, ")
    assert "SPF_FAIL" in headers["X-Spam-Status"]
    assert headers["Authentication-Results"] == "relay.test; spf=fail smtp.mailfrom=alice@fail.spf.test"


async def test_a_dnsbl_listing_in_tag_mode_flags_the_message(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "off", "dnsbl": {"zones": ["bl.test"], "action": "tag"}}})
    fx = facts("127.0.0.2", mail_from="alice@pass.spf.test")
    assert (await engine.on_connect(fx)).action is Action.TAG
    decision = await engine.on_data(fx, message(), envelope())
    headers = dict(decision.add_headers)
    assert headers["X-Spam-Flag"] == "YES" and "DNSBL_bl.test" in headers["X-Spam-Status"]


async def test_gtube_is_rejected_at_end_of_data(make_engine: EngineFactory, registry: CollectorRegistry) -> None:
    engine = make_engine({"spam": {"engine": "builtin", "tagAbove": 5, "rejectAbove": 15}})
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), message(GTUBE.decode()), envelope())
    assert decision.verdict.reply.startswith("550 5.7.1 Message rejected as spam (score 1000.0 > 15.0)")
    assert decision.add_headers == []
    assert sample(registry, "smtp_relay_policy_verdicts_total", check="spam", action="reject") == 1


async def test_a_blocked_attachment_is_rejected(make_engine: EngineFactory) -> None:
    engine = make_engine()
    data = message(attachment=("invoice.pdf.exe", b"not really a program"))
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), data, envelope())
    assert decision.verdict.code == 554 and decision.verdict.status == "5.7.1"
    assert "invoice.pdf.exe" in decision.verdict.text


async def test_a_blocked_attachment_is_quarantined_and_released(make_engine: EngineFactory) -> None:
    engine = make_engine({"attachments": {"action": "quarantine"}})
    data = message(attachment=("tool.exe", b"MZ\x90\x00" + b"\x00" * 60))
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), data, envelope())
    assert decision.verdict.action is Action.ACCEPT
    assert decision.quarantine_reason is not None and decision.quarantine_reason.startswith("attachment: tool.exe")
    entry_id = await engine.quarantine(envelope(), data, decision)
    store = engine.quarantine_store
    assert store is not None
    [entry] = store.list()
    assert (entry.id, entry.reason, entry.envelope) == (entry_id, decision.quarantine_reason, envelope())
    assert entry.verdicts and "tool.exe" in entry.verdicts[0]
    assert store.release(entry_id) == (envelope(), data)


@pytest.mark.parametrize("action", ["reject", "quarantine"])
async def test_ambiguous_mime_is_refused_with_5_6_0_whatever_the_action(
    make_engine: EngineFactory, action: str
) -> None:
    engine = make_engine({"attachments": {"action": action}})
    data = message().replace(b"Content-Type: text/plain", b'Content-Type: multipart/mixed; boundary="a"; boundary="b"')
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), data, envelope())
    assert (
        decision.verdict.reply
        == "554 5.6.0 Message rejected: malformed MIME structure (conflicting boundary parameters)"
    )
    assert decision.quarantine_reason is None


async def test_a_parser_crash_is_a_5xx_not_a_4xx(make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """RecursionError (or any parser bug) outside the inspection's own guard: 554 5.6.0, so senders do not retry."""

    def crash(data: bytes) -> Message:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(data_stage, "parse_message", crash)
    engine = make_engine({"spam": {"engine": "builtin"}})
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), message(), envelope())
    assert decision.verdict.code == 554 and decision.verdict.status == "5.6.0"
    assert "could not be parsed (RecursionError)" in decision.verdict.text


async def test_big_messages_and_big_archives_are_inspected_in_the_content_pool(make_engine: EngineFactory) -> None:
    engine = make_engine()
    threads: list[str] = []
    inspect = data_stage.inspect_attachments

    def spy(*args: Any, **kwargs: Any) -> AttachmentFinding | None:
        threads.append(threading.current_thread().name)
        return inspect(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_stage, "inspect_attachments", spy)
        small = message(attachment=("a.zip", zip_of({"a.txt": b"x"})))
        big = message(attachment=("big.bin", bytes(data_stage.INLINE_BYTES)))
        bomb = message(attachment=("a.zip", zip_of({"b.zip": zip_of({"z": bytes(4 << 20)}, compression=0)})))
        for data in (small, big, bomb):
            decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), data, envelope())
            assert decision.verdict.code == 250, decision.verdict.reply
    main = threading.current_thread().name
    assert len(threads) == 4
    assert threads[0] == main  # small: inline
    assert threads[1].startswith("content_")  # big: the pool
    assert threads[2] == main and threads[3].startswith("content_")  # inline until the budget ran out, then the pool


@pytest.mark.parametrize(("action", "code"), [("reject", 554), ("quarantine", 250)])
async def test_a_virus_found_by_clamd(
    make_engine: EngineFactory, clamd: Clamd, registry: CollectorRegistry, action: str, code: int
) -> None:
    engine = make_engine({"virus": {"engine": "clamd", "address": clamd.address, "action": action}})
    data = message(attachment=("readme.txt", eicar()))
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), data, envelope())
    assert decision.verdict.code == code
    signature = "Relayfleet.Test.EICAR"
    if action == "reject":
        assert decision.verdict.text.startswith(f"Message rejected: virus found ({signature}")
    else:
        assert decision.quarantine_reason is not None and decision.quarantine_reason.startswith(f"virus: {signature}")
    assert sample(registry, "smtp_relay_policy_scanner_seconds_count", scanner="clamd") == 1
    clean = await engine.on_data(facts(mail_from="alice@pass.spf.test"), message(), envelope())
    assert clean.verdict.code == 250 and clean.quarantine_reason is None


@pytest.mark.parametrize(("on_error", "code"), [("defer", 451), ("accept", 250)])
async def test_clamd_down(make_engine: EngineFactory, registry: CollectorRegistry, on_error: str, code: int) -> None:
    address = f"127.0.0.1:{closed_port()}"
    engine = make_engine({"virus": {"engine": "clamd", "address": address, "onScannerError": on_error}})
    decision = await engine.on_data(facts(mail_from="alice@pass.spf.test"), message(), envelope())
    assert decision.verdict.code == code
    if on_error == "defer":
        assert decision.verdict.reply == "451 4.3.0 Virus scanner unavailable, try again later"
    assert sample(registry, "smtp_relay_policy_scanner_errors_total", scanner="clamd") == 1


@pytest.mark.parametrize(
    ("engine_name", "fixture"),
    [("spamassassin", "spamd"), pytest.param("rspamd", "rspamd", marks=pytest.mark.slow)],
)
async def test_external_spam_engines(
    make_engine: EngineFactory,
    request: pytest.FixtureRequest,
    registry: CollectorRegistry,
    engine_name: str,
    fixture: str,
) -> None:
    daemon = request.getfixturevalue(fixture)
    # rspamd scores GTUBE exactly at its reject threshold (15), spamd at 1000: "above" 10 refuses both
    spam_spec = {"engine": engine_name, "address": daemon.address, "tagAbove": 5, "rejectAbove": 10}
    engine = make_engine({"spam": spam_spec})
    fx = facts(mail_from="alice@pass.spf.test")
    try:
        spam = await engine.on_data(fx, message(f"Buy now\n{GTUBE.decode()}\n"), envelope())
        assert spam.verdict.code == 550 and spam.verdict.text.startswith("Message rejected as spam (score")
        clean = await engine.on_data(fx, message(), envelope())
    finally:
        await engine.close()
    assert clean.verdict.code == 250
    status = dict(clean.add_headers)["X-Spam-Status"]
    assert status.startswith("No, ") and status.endswith(f"engine={engine_name}")
    assert sample(registry, "smtp_relay_policy_scanner_seconds_count", scanner=engine_name) == 2
