"""Traffic shaping end to end: the relay process, four real smtp-sinks standing for destinations.

Each destination is a smarthost route per recipient domain. What the limits promise is measured on the
sink side: open connections from the kernel's socket table (/proc/net/tcp, sampled), arrival times from
the sinks' dump files, sessions from smtp-sink's own counters. One sink turns into a throttling provider
(421 on MAIL, then hang up) after some messages, and back: the relay backs off, barely knocks while the
destination refuses, does not slow the other destinations meanwhile, and delivers everything afterwards.
"""

from __future__ import annotations

import itertools
import smtplib
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest
from bench.peers.ports import free_port
from bench.peers.smtp_sink import SinkBehaviour, SmtpSink

from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.peers.smtp_sink import SinkFactory

pytestmark = pytest.mark.peers


def _established_to(port: int) -> int:
    """Server-side sockets of 127.0.0.1:port in ESTABLISHED state, from the kernel's table (the sink's view)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for line in table if (fields := line.split())[1] == local and fields[3] == "01")


class ConnectionSampler(threading.Thread):
    """Samples a sink's open connections every millisecond or so; `peak` is the most seen at once."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _established_to(self.port))
            time.sleep(0.001)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _message(subject: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@example.com>"
    msg.set_content(f"body of {subject}\n")
    return msg.as_bytes(policy=SMTP)


def _send(port: int, domain: str, subjects: list[str]) -> None:
    """One session, one transaction per subject, to user@domain."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        for subject in subjects:
            client.sendmail("app@example.com", [f"user@{domain}"], _message(subject, f"user@{domain}"))


def _subjects(sink: SmtpSink) -> list[str]:
    return sorted(str(m.email()["Subject"]) for m in sink.messages())


def _arrivals(sink: SmtpSink) -> list[float]:
    """When each accepted message was written by the sink (its dump file's mtime), in order."""
    times = []
    for gen in sink._generations:
        if gen.dump is not None and gen.behaviour.accepts_data:
            times += [path.stat().st_mtime for path in gen.dump.iterdir()]
    return sorted(times)


def _route(domain: str, sink: SmtpSink, shaping: dict[str, Any] | None) -> dict[str, Any]:
    route: dict[str, Any] = {
        "match": {"recipientDomains": [domain]},
        "smarthosts": [{"host": "127.0.0.1", "port": sink.port, "tls": "none"}],
    }
    if shaping is not None:
        route["shaping"] = shaping
    return route


def test_shaping_against_real_destinations(smtp_sink_factory: SinkFactory, relay_factory: Any) -> None:
    conn_sink = smtp_sink_factory(delays={".": 1})  # slow: the relay would open its 4 pooled connections
    rate_sink = smtp_sink_factory()
    throttling = smtp_sink_factory()
    free = smtp_sink_factory()
    listen = free_port()
    relay: RelayProcess = relay_factory(
        {
            "listeners": [{"name": "relay", "port": listen}],
            "clients": {"allowedNetworks": ["127.0.0.0/8"]},
            "policy": {"spam": {"engine": "off"}},
            "routing": {
                "default": {"capture": {}},
                "routes": [
                    _route("conn.test", conn_sink, {"maxConnections": 2}),
                    _route("rate.test", rate_sink, {"messagesPerMinute": 600}),  # one every 0.1 s
                    _route(
                        "throttle.test",
                        throttling,
                        {"maxConnections": 2, "adaptive": {"initialBackoff": "2s", "maxBackoff": "4s"}},
                    ),
                    _route("free.test", free, None),
                ],
            },
            "queue": {"retry": {"schedule": ["1s"], "maxAge": "1h"}},  # unshaped, a 421 would be retried every 1 s
        }
    )
    names = (f"m{i}" for i in itertools.count())
    sent: dict[str, list[str]] = {"conn": [], "rate": [], "throttle": [], "free": []}

    def send(kind: str, count: int) -> None:
        subjects = [f"{kind}-{next(names)}" for _ in range(count)]
        sent[kind] += subjects
        _send(listen, f"{kind}.test", subjects)

    sampler = ConnectionSampler(conn_sink.port)
    sampler.start()
    try:
        send("conn", 6)
        send("rate", 20)
        send("throttle", 4)
        conn_sink.wait_for(6, timeout=30)
        rate_sink.wait_for(20, timeout=30)
        throttling.wait_for(4, timeout=30)
    finally:
        sampler.stop()

    # maxConnections: never more than 2 open to the destination, and the 2 are used
    assert sampler.peak == 2
    # messagesPerMinute 600, one every 0.1 s: paced, never a burst, and no second holds more than 10 (within
    # 50 ms of jitter between the relay's admission and the sink's dump timestamp; unshaped, the 20 arrive
    # within a few ms of each other)
    arrivals = _arrivals(rate_sink)
    assert min(b - a for a, b in itertools.pairwise(arrivals)) >= 0.05, arrivals
    assert min(arrivals[i + 10] - arrivals[i] for i in range(len(arrivals) - 10)) >= 1.0 - 0.05, arrivals

    # The destination starts throttling: 421 to MAIL, then it hangs up.
    throttling.restart(SinkBehaviour(reply_421=["MAIL"]))
    refused_from = throttling.sessions()
    send("throttle", 8)
    wait_for(lambda: "destination routes[2] backed off" in relay.log.read_text(), timeout=15)
    backed_off_at = time.monotonic()

    # Meanwhile other destinations are not slowed: 20 messages through at once.
    started = time.monotonic()
    send("free", 20)
    free.wait_for(20, timeout=10)
    assert time.monotonic() - started < 5

    time.sleep(max(0.0, backed_off_at + 5.0 - time.monotonic()))
    # ~5 s of refusals: paused 2 s, one try, paused 4 s: a few sessions, not 8 messages every second
    knocks = throttling.sessions() - refused_from
    assert 1 <= knocks <= 5, knocks
    assert relay.metric("smtp_relay_shaping_window", destination="routes[2]") == 1.0
    assert relay.metric("smtp_relay_shaped_recipients_total", reason="backoff") >= 1

    # It recovers: everything is delivered, exactly once, and the window grows back.
    throttling.restart(SinkBehaviour())
    wait_for(lambda: throttling.count() >= 12, timeout=30)
    wait_for(lambda: "destination routes[2] recovered" in relay.log.read_text(), timeout=30)
    wait_for(lambda: relay.queue()["queue"]["total"] == 0, timeout=15)
    assert _subjects(conn_sink) == sorted(sent["conn"])
    assert _subjects(rate_sink) == sorted(sent["rate"])
    assert _subjects(throttling) == sorted(sent["throttle"])
    assert _subjects(free) == sorted(sent["free"])
    assert relay.metric("smtp_relay_shaped_recipients_total", reason="connections") >= 1
    assert relay.metric("smtp_relay_shaped_recipients_total", reason="rate") >= 1
    assert relay.metric("smtp_relay_shaping_backoffs_total") >= 1
    assert relay.metric("smtp_relay_shaping_reduced_destinations") == 0
