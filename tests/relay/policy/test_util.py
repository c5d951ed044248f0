"""The policy helpers: the TTL cache (fake clock), reply text, client networks."""

from __future__ import annotations

from smtp_relay.policy.util import TtlCache, ip_in, parse_networks, reply_text


class Clock:
    """Virtual time for the pure state machines."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


def test_ipv4_mapped_ipv6_counts_as_ipv4() -> None:
    nets = parse_networks(["10.0.0.0/8"])
    assert ip_in("::ffff:10.9.9.9", nets)
    assert not ip_in("::ffff:11.9.9.9", nets)
    assert not ip_in("10.0.0.1", parse_networks([]))
