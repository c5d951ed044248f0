"""The policy checks' pure decision functions and state machines, with plain values and a fake clock.

(Sync tests live apart from async ones: a sync test in a module with async tests leaks an event loop
through looptime's hook, and warnings are errors.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtp_relay.config.spec import RateLimit
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy.admission import Action
from smtp_relay.policy.dnsbl import Listing, dnsbl_verdict, query_name
from smtp_relay.policy.quarantine import QuarantineError, QuarantineStore
from smtp_relay.policy.ratelimit import AuthThrottle, ConnectionLimiter, RateLimiter, SlidingWindow, limit_key
from smtp_relay.policy.recipients import recipient_domain_verdict, recipient_syntax_error, recipient_syntax_verdict
from smtp_relay.policy.spf import SpfResult, spf_verdict
from smtp_relay.policy.util import TtlCache, reply_text


class Clock:
    """Virtual time for the pure state machines."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- SPF verdicts ---------------------------------------------------------------------------------


def test_fail_is_rejected_with_the_explanation_in_reject_mode() -> None:
    verdict = spf_verdict(SpfResult("fail", "1.2.3.4 may not\r\nsend", domain="d.test"), "reject")
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.REJECT, 550, "5.7.23")
    assert verdict.text == "SPF fail for d.test: 1.2.3.4 may not send"  # CR/LF from DNS cannot split the reply


@pytest.mark.parametrize("result", ["fail", "softfail"])
def test_fail_and_softfail_are_tagged_in_tag_mode(result: str) -> None:
    verdict = spf_verdict(SpfResult(result, "x", domain="d.test"), "tag")  # type: ignore[arg-type]
    assert verdict is not None and verdict.action is Action.TAG
    assert verdict.reason == f"spf_{result}"


def test_softfail_is_only_tagged_even_in_reject_mode() -> None:
    verdict = spf_verdict(SpfResult("softfail", "x"), "reject")
    assert verdict is not None and verdict.action is Action.TAG


def test_temperror_defers_in_reject_mode_only() -> None:
    verdict = spf_verdict(SpfResult("temperror", "DNS timeout"), "reject")
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.DEFER, 451, "4.7.24")
    assert spf_verdict(SpfResult("temperror", "DNS timeout"), "tag") is None


@pytest.mark.parametrize("result", ["pass", "neutral", "none", "permerror"])
@pytest.mark.parametrize("mode", ["tag", "reject"])
def test_results_without_a_verdict(result: str, mode: str) -> None:
    assert spf_verdict(SpfResult(result, "x"), mode) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("result", ["fail", "softfail", "temperror"])
def test_off_gives_no_verdict(result: str) -> None:
    assert spf_verdict(SpfResult(result, "x"), "off") is None  # type: ignore[arg-type]


# --- DNSBL ----------------------------------------------------------------------------------------


def test_query_name_reverses_ipv4_octets() -> None:
    assert query_name("192.0.2.99", "bl.example.") == "99.2.0.192.bl.example."


def test_query_name_reverses_ipv6_nibbles() -> None:
    # RFC 5782 2.4's example
    assert query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example."
    )


def test_query_name_of_ipv4_mapped_ipv6_is_the_ipv4_name() -> None:
    assert query_name("::ffff:127.0.0.2", "bl.test") == "2.0.0.127.bl.test."


@pytest.mark.parametrize("address", ["", "unix:/tmp/sock", "300.1.1.1"])
def test_no_query_name_for_what_is_not_an_address(address: str) -> None:
    assert query_name(address, "bl.test") is None


def test_a_listing_is_rejected_naming_zone_and_reason() -> None:
    listings = [Listing("bl.test", "127.0.0.2", "see\r\nhttp://bl.test/?x"), Listing("b2.test", "127.0.0.3", "")]
    verdict = dnsbl_verdict(listings, "reject")
    assert verdict is not None
    assert verdict.reply == "554 5.7.1 Client host rejected: listed in bl.test: see http://bl.test/?x"


def test_a_listing_without_text_names_the_code_and_can_be_tagged() -> None:
    verdict = dnsbl_verdict([Listing("bl.test", "127.0.0.4", "")], "tag")
    assert verdict is not None
    assert (verdict.action, verdict.reason) == (Action.TAG, "dnsbl")
    assert verdict.text == "listed in bl.test: returned 127.0.0.4"


def test_no_listing_no_verdict() -> None:
    assert dnsbl_verdict([], "reject") is None


# --- recipients -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com",
        "bob.smith+tag@sub.example.com",
        '"bob smith"@example.com',
        '"quoted\\"quote"@example.com',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "Postmaster",
        "@relay.example,@other.example:bob@example.com",
        "<bob@example.com>",
        "jürgen@bücher.example",
        "x" * 64 + "@example.com",
    ],
)
def test_valid_recipients(address: str) -> None:
    assert recipient_syntax_error(address) is None
    assert recipient_syntax_verdict(address) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "empty address"),
        ("bob", "no domain"),
        ("@example.com", "empty local part"),
        ("bob@", "empty domain"),
        ("bob..smith@example.com", "invalid local part"),
        (".bob@example.com", "invalid local part"),
        ("bob smith@example.com", "invalid local part"),
        ("bob@exa mple.com", "invalid domain"),
        ("bob@-example.com", "invalid domain"),
        ("bob@example..com", "invalid domain"),
        ("bob@[192.0.2.300]", "invalid address literal"),
        ("x" * 65 + "@example.com", "local part longer than 64 octets"),
        ("bob@" + "a" * 64 + ".com", "invalid domain"),
        ("bob@" + ".".join(["abcdefghi"] * 30), "address longer than 254 octets"),
    ],
)
def test_invalid_recipients_get_501_with_the_reason(address: str, why: str) -> None:
    error = recipient_syntax_error(address)
    assert error is not None and error.startswith(why)
    verdict = recipient_syntax_verdict(address)
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.status) == (Action.REJECT, 501, "5.1.3")
    assert verdict.text == f"Bad recipient address syntax: {error}"


def test_non_ascii_needs_smtputf8() -> None:
    assert recipient_syntax_error("jürgen@example.com", smtputf8=False) == "invalid local part"
    assert recipient_syntax_error("bob@bücher.example", smtputf8=False) == "invalid domain"


def test_a_domain_without_mail_is_550_at_rcpt_and_unknown_is_no_opinion() -> None:
    verdict = recipient_domain_verdict("nowhere.test", False)
    assert verdict is not None
    assert verdict.reply == (
        "550 5.1.2 Recipient address rejected: domain nowhere.test does not accept mail (no MX or address record)"
    )
    assert recipient_domain_verdict("nowhere.test", None) is None
    assert recipient_domain_verdict("mail.test", True) is None


# --- rate limits ----------------------------------------------------------------------------------


def test_sliding_window_slides_instead_of_resetting() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock)
    window.hit("k", 6)
    clock.now += 60  # a new bucket starts: all six events still count with full weight
    assert window.count("k") == pytest.approx(6)
    clock.now += 30  # half of the previous bucket is still in the window
    assert window.count("k") == pytest.approx(3)
    clock.now += 30
    assert window.count("k") == 0


def test_sliding_window_keeps_memory_bounded() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock, max_keys=100)
    for i in range(1000):
        window.hit(f"client-{i}")
    assert len(window) == 100
    assert window.count("client-999") == 1 and window.count("client-0") == 0


def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    window = SlidingWindow(60, clock)
    window.hit("old")
    clock.now += 121
    window.hit("new")
    assert len(window) == 1


@pytest.mark.parametrize(
    ("key", "expected"),
    [("client", "192.0.2.1"), ("user", "alice"), ("sender", "bob@example.com"), ("senderDomain", "example.com")],
)
def test_limit_keys(key: str, expected: str) -> None:
    limit = RateLimit(key=key, limit=1)
    assert limit_key(limit, "192.0.2.1", "alice", "Bob@Example.com") == expected


def test_limits_that_do_not_apply() -> None:
    assert limit_key(RateLimit(key="user", limit=1), "192.0.2.1", None, "a@b.c") is None
    assert limit_key(RateLimit(key="senderDomain", limit=1), "192.0.2.1", None, "") is None
    assert limit_key(RateLimit(key="sender", limit=1), "192.0.2.1", None, "") == "<>"
    assert limit_key(RateLimit(key="sender", limit=1), "192.0.2.1", None, None) is None


def test_rate_limit_defers_with_451_until_the_window_slides() -> None:
    clock = Clock()
    limiter = RateLimiter([RateLimit(key="senderDomain", limit=3, per="1m")], clock)
    for _ in range(3):
        assert limiter.check("192.0.2.1", None, "a@example.com") is None  # MAIL: room left
        assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None  # end of DATA: counted
    verdict = limiter.check("192.0.2.9", None, "other@EXAMPLE.com")
    assert verdict is not None
    assert verdict.reply == "451 4.7.1 Rate limit exceeded for senderDomain (3 per 1m), try again later"
    assert verdict.reason == "ratelimit_senderDomain"
    assert limiter.check("192.0.2.1", None, "a@other.example") is None  # other domains are not affected
    clock.now += 100  # 1/3 of the old bucket left in the window: 1 counted, room for 2
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is None
    assert limiter.check("192.0.2.1", None, "a@example.com", cost=1) is not None


def test_a_deferred_message_is_not_counted() -> None:
    limiter = RateLimiter([RateLimit(key="client", limit=1, per="1h")], Clock())
    assert limiter.check("192.0.2.1", None, "a@b.c", cost=1) is None
    for _ in range(5):
        assert limiter.check("192.0.2.1", None, "a@b.c", cost=1) is not None
    assert limiter.check("192.0.2.2", None, "a@b.c", cost=1) is None


def test_the_first_exhausted_of_several_limits_decides() -> None:
    limiter = RateLimiter([RateLimit(key="client", limit=5), RateLimit(key="user", limit=2)], Clock())
    assert limiter.check("192.0.2.1", "alice", "a@b.c", cost=2) is None
    verdict = limiter.check("192.0.2.1", "alice", "a@b.c")
    assert verdict is not None and verdict.reason == "ratelimit_user"
    assert limiter.check("192.0.2.1", None, "a@b.c") is None  # unauthenticated: only the client limit applies


def test_auth_throttle_delays_then_refuses_for_the_cooldown() -> None:
    clock = Clock()
    throttle = AuthThrottle(max_failures=5, delay_after=2, window=600, cooldown=900, max_delay=3, clock=clock)
    delays = []
    for _ in range(4):
        assert throttle.before_auth("192.0.2.1") is None
        verdict, delay = throttle.failure("192.0.2.1")
        assert verdict.reply == "535 5.7.8 Authentication credentials invalid"
        delays.append(delay)
    assert delays == [0, 0, 1, 2]
    verdict, delay = throttle.failure("192.0.2.1")
    assert (verdict.code, verdict.status, delay) == (454, "4.7.0", 3)
    refused = throttle.before_auth("192.0.2.1")
    assert refused is not None and refused.reply == "454 4.7.0 Too many authentication failures, try again later"
    assert throttle.before_auth("192.0.2.2") is None  # only that client
    clock.now += 899
    assert throttle.before_auth("192.0.2.1") is not None
    clock.now += 1
    assert throttle.before_auth("192.0.2.1") is None


def test_a_successful_login_clears_the_failures() -> None:
    throttle = AuthThrottle(max_failures=3, delay_after=1, clock=Clock())
    throttle.failure("192.0.2.1")
    throttle.failure("192.0.2.1")
    throttle.success("192.0.2.1")
    _, delay = throttle.failure("192.0.2.1")
    assert delay == 0
    assert throttle.before_auth("192.0.2.1") is None


def test_connection_limit_per_client() -> None:
    limiter = ConnectionLimiter(max_per_client=2)
    assert limiter.acquire("192.0.2.1") is None
    assert limiter.acquire("192.0.2.1") is None
    refused = limiter.acquire("192.0.2.1")
    assert refused is not None and refused.reply == "421 4.7.0 Too many connections from your host, try again later"
    assert limiter.acquire("192.0.2.2") is None
    limiter.release("192.0.2.1")
    assert limiter.acquire("192.0.2.1") is None
    for _ in range(3):
        limiter.release("192.0.2.1")
    assert limiter.open_connections("192.0.2.1") == 0


# --- helpers --------------------------------------------------------------------------------------


def test_ttl_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache: TtlCache[str, bool] = TtlCache(10, max_items=2, clock=clock)
    cache.put("a", True)
    cache.put("b", False, ttl=1)
    assert cache.get("b") is False
    clock.now += 1
    assert cache.get("b") is None and cache.get("a") is True
    cache.put("c", True)
    cache.put("d", True)
    assert cache.get("a") is None and len(cache) == 2


def test_reply_text_is_one_printable_line() -> None:
    assert reply_text("a\r\n250 ok\x00\tb  c") == "a 250 ok b c"
    assert len(reply_text("x" * 1000, 50)) == 50


# --- quarantine store -----------------------------------------------------------------------------

ENVELOPE = Envelope("alice@example.com", ("bob@example.net", "carol@example.net"), client_ip="192.0.2.1", helo="h")
DATA = b"Subject: infected\r\n\r\nX5O!P%@AP...\r\n"


def test_quarantine_round_trip(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "quarantine", clock=Clock(1_700_000_000.5))
    entry_id = store.put(ENVELOPE, DATA, "virus: Eicar-Signature", ["550 5.7.1 virus found"])
    [entry] = store.list()
    assert entry.id == entry_id
    assert (entry.envelope, entry.reason, entry.verdicts, entry.time, entry.size) == (
        ENVELOPE,
        "virus: Eicar-Signature",
        ("550 5.7.1 virus found",),
        1_700_000_000.5,
        len(DATA),
    )
    assert store.get(entry_id) == entry
    assert store.data(entry_id) == DATA
    sidecar = json.loads((tmp_path / "quarantine" / f"{entry_id}.json").read_text())
    assert sidecar["envelope"]["rcpt_tos"] == ["bob@example.net", "carol@example.net"]

    envelope, data = store.release(entry_id)
    assert (envelope, data) == (ENVELOPE, DATA)
    assert store.list() == []
    with pytest.raises(QuarantineError):
        store.release(entry_id)  # a second release cannot get it too
    store.finish_release(entry_id)
    assert not list((tmp_path / "quarantine").rglob(f"{entry_id}*"))


def test_a_failed_release_lists_the_message_again(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    entry_id = store.put(ENVELOPE, DATA, "attachment: a.exe")
    store.release(entry_id)
    store.abort_release(entry_id)
    assert [e.id for e in store.list()] == [entry_id]


def test_a_release_interrupted_by_a_crash_is_listed_after_restart(tmp_path: Path) -> None:
    entry_id = QuarantineStore(tmp_path).put(ENVELOPE, DATA, "spam")
    QuarantineStore(tmp_path).release(entry_id)
    assert [e.id for e in QuarantineStore(tmp_path).list()] == [entry_id]


def test_delete_and_unknown_ids(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    first = store.put(ENVELOPE, DATA, "spam")
    second = store.put(ENVELOPE, b"other", "spam")
    store.delete(first)
    assert [e.id for e in store.list()] == [second]
    for bad in (first, "../../etc/passwd", "x"):
        with pytest.raises(QuarantineError):
            store.delete(bad)
        with pytest.raises(QuarantineError):
            store.get(bad)


def test_a_damaged_sidecar_does_not_hide_the_others(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    good = store.put(ENVELOPE, DATA, "spam")
    (tmp_path / "000000000000-000000000000.json").write_text("{not json")
    assert [e.id for e in store.list()] == [good]
