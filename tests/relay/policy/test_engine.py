"""The policy engine at each SMTP stage, with plain Facts, real DNS (nsd), real clamd and the builtin scorer."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from bench.peers.ports import free_port
from prometheus_client import CollectorRegistry

from smtp_relay.config.spec import Listener, SmtpRelaySpec
from smtp_relay.delivery.resolver import make_resolver
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.admission import Action, Facts
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.quarantine import QuarantineStore
from tests.harness.metrics import sample
from tests.peers.clamd import Clamd, eicar
from tests.peers.dns import DnsServer
from tests.relay.policy.zones import CLIENT, DNSBL_ZONE, MAIL_ZONE, SPF_ZONE

pytestmark = pytest.mark.peers

LISTENER = Listener(name="smtp", port=2525)
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

EngineFactory = Callable[..., PolicyEngine]


@pytest.fixture
def dns_server(dns_server_factory) -> DnsServer:  # type: ignore[no-untyped-def]
    return dns_server_factory({**SPF_ZONE, **DNSBL_ZONE, **MAIL_ZONE})  # type: ignore[no-any-return]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_engine(dns_server: DnsServer, registry: CollectorRegistry, tmp_path: Path) -> EngineFactory:
    """An engine for a spec written as the manifest would (camelCase dict), pointed at the test's nsd."""

    def make(policy: dict[str, Any] | None = None, **kwargs: Any) -> PolicyEngine:
        spec = SmtpRelaySpec.model_validate(
            {
                "policy": policy or {},
                "dns": {"nameservers": [dns_server.nameserver()]},
                "routing": {"default": {"mx": {}}},  # direct delivery: the relay checks recipient domains itself
                **kwargs.pop("spec", {}),
            }
        )
        return PolicyEngine(
            spec,
            make_resolver(spec.dns),
            hostname="relay.test",
            metrics=PolicyMetrics(registry),
            quarantine=QuarantineStore(tmp_path / "quarantine"),
            **kwargs,
        )

    return make


def facts(client_ip: str = CLIENT, mail_from: str | None = None, rcpt: str | None = None, **kw: Any) -> Facts:
    return Facts(
        listener=LISTENER, client_ip=client_ip, helo=kw.pop("helo", "client.test"), mail_from=mail_from, rcpt=rcpt, **kw
    )


def message(body: str = "Hello Bob,\nthe report attached.\n", *, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@pass.spf.test>"
    msg["To"] = "bob@mail.test"
    msg["Subject"] = "Quarterly report"
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    msg["Message-ID"] = "<report-1@pass.spf.test>"
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0])
    return msg.as_bytes(policy=email.policy.SMTP)


def closed_port() -> int:
    """A port with nothing listening: connections are refused at once."""
    return free_port()


# --- connect --------------------------------------------------------------------------------------


async def test_a_listed_client_is_refused_at_connect(make_engine: EngineFactory, registry: CollectorRegistry) -> None:
    engine = make_engine({"ipAuthority": {"dnsbl": {"zones": ["bl.test"], "action": "reject"}}})
    verdict = await engine.on_connect(facts("127.0.0.2"))
    assert verdict.reply == (
        "554 5.7.1 Client host rejected: listed in bl.test: 127.0.0.2 is listed, see https://bl.test/lookup?127.0.0.2"
    )
    assert (await engine.on_connect(facts("127.0.0.1"))).action is Action.ACCEPT
    assert sample(registry, "smtp_relay_policy_checks_total", check="dnsbl") == 2
    assert sample(registry, "smtp_relay_policy_verdicts_total", check="dnsbl", action="reject") == 1


async def test_connections_per_client_are_limited_except_for_allowed_networks(make_engine: EngineFactory) -> None:
    engine = make_engine(spec={"clients": {"allowedNetworks": ["10.0.0.0/8"]}}, max_connections_per_client=2)
    for _ in range(2):
        assert (await engine.on_connect(facts("192.0.2.1"))).action is Action.ACCEPT
    refused = await engine.on_connect(facts("192.0.2.1"))
    assert refused.reply == "421 4.7.0 Too many connections from your host, try again later"
    for _ in range(5):
        assert (await engine.on_connect(facts("10.1.2.3"))).action is Action.ACCEPT
    engine.on_disconnect(facts("192.0.2.1"))
    assert (await engine.on_connect(facts("192.0.2.1"))).action is Action.ACCEPT


# --- MAIL: SPF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "sender", "action", "reply"),
    [
        (
            "reject",
            "a@fail.spf.test",
            Action.REJECT,
            "550 5.7.23 SPF fail for fail.spf.test: SPF fail - not authorized",
        ),
        ("tag", "a@fail.spf.test", Action.TAG, None),
        ("reject", "a@softfail.spf.test", Action.TAG, None),
        ("reject", "a@pass.spf.test", Action.ACCEPT, None),
        ("reject", "a@toomany.spf.test", Action.ACCEPT, None),
        ("off", "a@fail.spf.test", Action.ACCEPT, None),
    ],
)
async def test_spf_at_mail(
    make_engine: EngineFactory, mode: str, sender: str, action: Action, reply: str | None
) -> None:
    engine = make_engine({"ipAuthority": {"spf": mode}})
    verdict = await engine.on_mail(facts(mail_from=sender))
    assert verdict.action is action
    if reply is not None:
        assert verdict.reply == reply


async def test_spf_is_not_asked_for_the_platforms_own_networks(make_engine: EngineFactory) -> None:
    """allowedNetworks are the authority for internal apps: their pod IPs are in no domain's SPF."""
    engine = make_engine({"ipAuthority": {"spf": "reject"}}, spec={"clients": {"allowedNetworks": ["127.0.0.0/8"]}})
    verdict = await engine.on_mail(facts(mail_from="a@fail.spf.test"))
    assert verdict.action is Action.ACCEPT
    decision = await engine.on_data(facts(mail_from="a@fail.spf.test"), message(), envelope("a@fail.spf.test"))
    assert not any(name == "Authentication-Results" and "spf=" in value for name, value in decision.add_headers)


async def test_require_verified_domain(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "off"}}, spec={"senders": {"requireVerifiedDomain": True}})
    unknown = await engine.on_mail(facts(mail_from="a@pass.spf.test"))
    assert unknown.code == 451  # the SendingDomain status is not known yet: retry, do not bounce
    engine.verified_domains = {"pass.spf.test"}
    assert (await engine.on_mail(facts(mail_from="a@pass.spf.test"))).action is Action.ACCEPT
    refused = await engine.on_mail(facts(mail_from="a@other.test"))
    assert refused.reply == "553 5.7.1 Sender domain other.test is not verified"
    assert (await engine.on_mail(facts(mail_from=""))).action is Action.ACCEPT  # bounces have no domain


# --- RCPT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        ("bob@mail.test", None),
        ("bob@aonly.mail.test", None),
        (
            "bob@nowhere.mail.test",
            "550 5.1.2 Recipient address rejected: domain nowhere.mail.test does not accept mail "
            "(no MX or address record)",
        ),
        (
            "bob@nullmx.mail.test",
            "550 5.1.2 Recipient address rejected: domain nullmx.mail.test does not accept mail "
            "(no MX or address record)",
        ),
        ("bob..x@mail.test", "501 5.1.3 Bad recipient address syntax: invalid local part"),
    ],
)
async def test_recipients_at_rcpt(make_engine: EngineFactory, rcpt: str, reply: str | None) -> None:
    engine = make_engine()
    verdict = await engine.on_rcpt(facts(mail_from="a@pass.spf.test", rcpt=rcpt))
    assert verdict.reply == (reply or "250 2.0.0 Ok")


@pytest.mark.parametrize("route", [{"capture": {}}, {"smarthosts": [{"host": "127.0.0.1"}]}])
async def test_recipient_domains_are_left_to_the_next_hop_off_mx_routes(
    make_engine: EngineFactory, route: dict[str, Any]
) -> None:
    """A smarthost may know domains public DNS does not; captured mail goes nowhere: no 550 5.1.2 there."""
    engine = make_engine(spec={"routing": {"default": route}})
    assert (await engine.on_rcpt(facts(rcpt="bob@nowhere.mail.test"))).code == 250
    assert (await engine.on_rcpt(facts(rcpt="bob..x@mail.test"))).code == 501  # syntax is still ours


async def test_recipient_domains_are_cached(make_engine: EngineFactory, dns_server: DnsServer) -> None:
    engine = make_engine()
    assert (await engine.on_rcpt(facts(rcpt="bob@nowhere.mail.test"))).code == 550
    assert (await engine.on_rcpt(facts(rcpt="bob@mail.test"))).code == 250
    dns_server.stop()  # both answers are remembered for a while
    assert (await engine.on_rcpt(facts(rcpt="carol@nowhere.mail.test"))).code == 550
    assert (await engine.on_rcpt(facts(rcpt="carol@mail.test"))).code == 250


# --- end of DATA ----------------------------------------------------------------------------------


def envelope(sender: str = "alice@pass.spf.test") -> Envelope:
    return Envelope(sender, ("bob@mail.test",), client_ip=CLIENT, helo="client.test")


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


# --- rate limits and AUTH in virtual time --------------------------------------------------------


@pytest.mark.looptime
async def test_rate_limit_counts_accepted_messages_and_slides(make_engine: EngineFactory) -> None:
    loop = asyncio.get_running_loop()
    engine = make_engine(
        {"ipAuthority": {"spf": "off"}, "rateLimits": [{"key": "sender", "limit": 2, "per": "1m"}]}, clock=loop.time
    )
    fx = facts(mail_from="alice@pass.spf.test")
    for _ in range(2):
        assert (await engine.on_mail(fx)).action is Action.ACCEPT
        assert (await engine.on_data(fx, message(), envelope())).verdict.code == 250
    assert (await engine.on_mail(fx)).reply.startswith("451 4.7.1 Rate limit exceeded for sender")
    assert (await engine.on_data(fx, message(), envelope())).verdict.code == 451  # parallel sessions cannot slip by
    assert (await engine.on_mail(facts(mail_from="carol@pass.spf.test"))).action is Action.ACCEPT
    await asyncio.sleep(120)
    assert (await engine.on_mail(fx)).action is Action.ACCEPT


@pytest.mark.looptime
async def test_auth_failures_are_tarpitted_then_refused(make_engine: EngineFactory) -> None:
    loop = asyncio.get_running_loop()
    engine = make_engine(clock=loop.time)
    fx = facts("192.0.2.7")
    started = loop.time()
    replies = [(await engine.auth_failed(fx)).code for _ in range(10)]
    assert replies == [535] * 9 + [454]
    assert loop.time() - started == pytest.approx(0 + 0 + 0 + 1 + 2 + 3 + 4 + 5 + 5 + 5)
    assert engine.before_auth(fx).reply == "454 4.7.0 Too many authentication failures, try again later"
    assert engine.before_auth(facts("192.0.2.8")).action is Action.ACCEPT
    await asyncio.sleep(900)
    assert engine.before_auth(fx).action is Action.ACCEPT


# --- audit mode and reload ------------------------------------------------------------------------


async def test_audit_mode_accepts_everything_but_counts_it(
    make_engine: EngineFactory, registry: CollectorRegistry
) -> None:
    engine = make_engine(
        {
            "mode": "audit",
            "ipAuthority": {"spf": "reject", "dnsbl": {"zones": ["bl.test"], "action": "reject"}},
            "attachments": {"action": "quarantine"},
            "rateLimits": [{"key": "client", "limit": 1}],
        }
    )
    fx = facts("127.0.0.2", mail_from="alice@fail.spf.test", rcpt="bob@nowhere.mail.test")
    assert (await engine.on_connect(fx)).action is Action.ACCEPT
    assert (await engine.on_mail(fx)).action is Action.ACCEPT
    assert (await engine.on_rcpt(fx)).action is Action.ACCEPT
    data = message(GTUBE.decode(), attachment=("x.exe", b"MZ"))
    for _ in range(2):  # the second one is over the rate limit too
        decision = await engine.on_data(fx, data, envelope("alice@fail.spf.test"))
        assert (decision.verdict.action, decision.add_headers, decision.quarantine_reason) == (Action.ACCEPT, [], None)
    audited = {
        (check, action): sample(registry, "smtp_relay_policy_audit_overrides_total", check=check, action=action)
        for check, action in [
            ("dnsbl", "reject"),
            ("spf", "reject"),
            ("rcpt_domain", "reject"),
            ("attachments", "quarantine"),
            ("spam", "reject"),
            ("ratelimit", "defer"),
        ]
    }
    assert audited == {
        ("dnsbl", "reject"): 1,
        ("spf", "reject"): 1,
        ("rcpt_domain", "reject"): 1,
        ("attachments", "quarantine"): 2,
        ("spam", "reject"): 2,
        ("ratelimit", "defer"): 1,
    }


async def test_update_applies_a_new_policy(make_engine: EngineFactory) -> None:
    engine = make_engine({"ipAuthority": {"spf": "reject"}})
    fx = facts(mail_from="a@fail.spf.test")
    assert (await engine.on_mail(fx)).action is Action.REJECT
    await engine.update(SmtpRelaySpec.model_validate({"policy": {"ipAuthority": {"spf": "off"}}}))
    assert (await engine.on_mail(fx)).action is Action.ACCEPT
    await engine.close()
