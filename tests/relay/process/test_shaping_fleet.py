"""Fleet-wide shaping rates end to end: three relay processes share one destination's messagesPerMinute
through a real redis-server, and deliver to one real smtp-sink standing for that destination.

The three processes stand for three pods of one SmtpRelay (spec.replicas: 3), each holding part of a
campaign. Whatever relay holds a message, the deliveries the sink sees in any second stay within the
destination's rate; when Redis is killed mid-run each relay paces a third of it, nothing crashes, and every
message is delivered exactly once.
"""

from __future__ import annotations

import smtplib
import threading
import time
from typing import Any

import pytest
from bench.peers.ports import free_port
from bench.peers.redis import RedisServer
from bench.peers.smtp_sink import SmtpSink

from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.peers.redis import RedisFactory
from tests.peers.smtp_sink import SinkFactory

pytestmark = [pytest.mark.peers, pytest.mark.slow]

RATE = 300
"""messagesPerMinute of the destination: one every 0.2 s, at most 5 in any second, for the whole fleet."""
PER_RELAY = 10


def _spec(port: int, redis: RedisServer, sink: SmtpSink) -> dict[str, Any]:
    return {
        "replicas": 3,
        "listeners": [{"name": "smtp", "port": port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "policy": {"spam": {"engine": "off"}},
        "limits": {"backend": "redis", "redis": {"address": redis.address, "timeout": "2s"}},
        "routing": {
            "default": {
                "smarthosts": [{"host": "127.0.0.1", "port": sink.port, "tls": "none"}],
            },
            "shaping": {"messagesPerMinute": RATE},
        },
        "queue": {"retry": {"schedule": ["1s"], "maxAge": "1h"}},
    }


class Arrivals(threading.Thread):
    """When the sink counted each message: its count sampled every few milliseconds."""

    def __init__(self, sink: SmtpSink) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.times: list[float] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            count = self.sink.count()
            now = time.monotonic()
            self.times += [now] * (count - len(self.times))
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self.join(5)

    def most_in(self, window: float, since: float = 0.0, until: float = float("inf")) -> int:
        """The most messages counted in any `window` seconds between `since` and `until`."""
        chosen = [t for t in self.times if since <= t < until]
        return max((sum(1 for t in chosen[i:] if t < start + window) for i, start in enumerate(chosen)), default=0)


def _send(port: int, relay: int, count: int) -> list[str]:
    """One session to a relay with `count` messages; their subjects."""
    subjects = [f"relay{relay}-m{i}" for i in range(count)]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for subject in subjects:
            text = f"From: app@example.com\r\nTo: user@dest.test\r\nSubject: {subject}\r\n\r\nbody\r\n"
            client.sendmail("app@example.com", ["user@dest.test"], text)
    return subjects


def test_three_relays_keep_one_rate_and_survive_losing_redis(
    relay_factory: Any, redis_factory: RedisFactory, smtp_sink_factory: SinkFactory
) -> None:
    redis = redis_factory()
    sink = smtp_sink_factory()
    ports = [free_port() for _ in range(3)]
    relays: list[RelayProcess] = [relay_factory(_spec(port, redis, sink)) for port in ports]
    arrivals = Arrivals(sink)
    arrivals.start()
    try:
        sent = [s for i, port in enumerate(ports) for s in _send(port, i, PER_RELAY)]
        sink.wait_for(12, timeout=30)  # ~2.4 s of the fleet's rate; 18 messages still wait in three queues
        killed_at = time.monotonic()
        redis.kill()  # mid-run
        sink.wait_for(len(sent), timeout=60)
        time.sleep(0.5)  # a duplicate would show up now
    finally:
        arrivals.stop()

    # Fleet-wide: 30 messages held by three relays reach the sink at the fleet's pace, not three times it
    # (unshaped they arrive within a second; shaped per process, 15 per second). One more for the jitter
    # between a relay's admission and the sink's count.
    assert arrivals.most_in(1.0, until=killed_at) <= RATE // 60 + 1, arrivals.times
    assert arrivals.most_in(2.0, until=killed_at) <= 2 * RATE // 60 + 1, arrivals.times
    # Without Redis each relay paces a third of the rate (one every 0.6 s): the fleet stays within it, with
    # the three unsynchronised processes' first admissions as slack.
    assert arrivals.most_in(2.0, since=killed_at) <= 2 * RATE // 60 + 3, arrivals.times
    # Everything delivered, exactly once, and nothing crashed.
    subjects = sorted(str(m.email()["Subject"]) for m in sink.messages())
    assert subjects == sorted(sent)
    for relay in relays:
        assert relay.proc is not None and relay.proc.poll() is None
        wait_for(lambda relay=relay: relay.queue()["queue"]["total"] == 0, timeout=15)
        assert relay.metric("smtp_relay_shaping_rate_decisions_total", backend="redis") >= 1
    held = [r for r in relays if r.metric("smtp_relay_shaping_rate_decisions_total", backend="local") >= 1]
    assert held  # at least the relays that still had mail paced locally after the kill
    for relay in held:
        assert relay.metric("smtp_relay_limits_fallback") == 1
        assert relay.log.read_text().count("falling back to local limits, each divided by 3") == 1
    assert sum(r.metric("smtp_relay_shaped_recipients_total", reason="rate") for r in relays) >= 1
