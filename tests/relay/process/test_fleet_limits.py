"""Fleet-wide limits end to end: three relay processes share one limit through a real redis-server.

The three processes stand for three pods of one SmtpRelay (spec.replicas: 3); mail from one sender is
sent to each in turn, as a load balancer would spread it. Whatever relay receives them, the messages
accepted within the window never exceed the limit; when Redis is killed mid-run each relay falls back
to its third of the limit, keeps accepting, and loses nothing it answered 250 to.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from bench.peers.ports import free_port
from bench.peers.redis import RedisServer

from tests.harness.relay_proc import RelayProcess
from tests.harness.waiting import wait_for
from tests.peers.redis import RedisFactory

pytestmark = pytest.mark.peers

LIMIT = 12
SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis-auth"}, "stringData": {"password": "pw-1"}}


def _spec(port: int, redis: RedisServer) -> dict[str, Any]:
    return {
        "replicas": 3,
        "listeners": [{"name": "smtp", "port": port}],
        "clients": {"allowedNetworks": ["127.0.0.0/8"]},
        "policy": {"rateLimits": [{"key": "sender", "limit": LIMIT, "per": "1h"}]},
        "limits": {
            "backend": "redis",
            "redis": {"address": redis.address, "secretName": "redis-auth", "timeout": "2s"},
        },
        "routing": {"default": {"capture": {}}},
    }


def _send(port: int, sender: str, n: int) -> int:
    """One message from `sender`; its reply code (250, or the refusal at MAIL or DATA)."""
    message = f"From: {sender}\r\nTo: bob@example.test\r\nSubject: fleet {n}\r\n\r\nmessage {n}\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(sender, ["bob@example.test"], message)
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPRecipientsRefused as exc:
        return next(iter(exc.recipients.values()))[0]
    return 250


def _captured(relay: RelayProcess) -> int:
    new = relay.spool / "capture" / "new"
    return len(list(new.iterdir())) if new.exists() else 0


def _fleet(relay_factory: Any, redis: RedisServer) -> tuple[list[RelayProcess], list[int]]:
    ports = [free_port() for _ in range(3)]
    return [relay_factory(_spec(port, redis), SECRET) for port in ports], ports


def test_three_relays_enforce_one_limit_and_survive_losing_redis(
    relay_factory: Any, redis_factory: RedisFactory
) -> None:
    redis = redis_factory(password="pw-1")
    relays, ports = _fleet(relay_factory, redis)
    codes = [_send(ports[i % 3], "alice@example.test", i) for i in range(30)]
    assert codes.count(250) == LIMIT, codes  # one limit for the fleet, not one per relay
    assert set(codes) == {250, 451}
    per_relay = [sum(1 for i, c in enumerate(codes) if c == 250 and i % 3 == r) for r in range(3)]
    assert sorted(per_relay) != [0, 0, LIMIT] and sum(per_relay) == LIMIT  # spread over the relays
    assert sum(r.metric("smtp_relay_limits_decisions_total", backend="redis") for r in relays) >= LIMIT

    redis.kill()  # mid-run: each relay now allows its third of the limit, from its own fresh count
    after = [_send(ports[i % 3], "carol@example.test", 100 + i) for i in range(18)]
    assert after.count(250) == 3 * (LIMIT // 3), after
    for relay in relays:
        assert relay.proc is not None and relay.proc.poll() is None  # no crash
        assert relay.metric("smtp_relay_limits_fallback") == 1
        assert relay.metric("smtp_relay_limits_share") == 3
        assert relay.log.read_text().count("falling back to local limits, each divided by 3") == 1
        assert relay.http("/readyz", token=None)[0] == 200
    accepted = codes.count(250) + after.count(250)
    wait_for(lambda: sum(_captured(r) for r in relays) == accepted, timeout=20)  # every 250 is kept

    redis.start()  # reconnects by itself
    for relay in relays:
        wait_for(lambda relay=relay: relay.metric("smtp_relay_limits_fallback") == 0, timeout=10)
        assert "answers again: limits are fleet-wide" in relay.log.read_text()
    back = [_send(ports[i % 3], "dave@example.test", 200 + i) for i in range(LIMIT + 3)]
    assert back.count(250) == LIMIT, back


def test_a_wrong_redis_password_is_named_and_mail_still_flows(relay_factory: Any, redis_factory: RedisFactory) -> None:
    """With `--workers 2` and 3 replicas, each worker's fallback share is a sixth of the limit."""
    redis = redis_factory(password="another-password")
    port = free_port()
    relay = relay_factory(_spec(port, redis), SECRET, args=["--workers", "2"], start=False)
    relay.start(wait=False)
    relay.wait_ready(timeout=60)  # three processes to start on a shared machine
    codes = [_send(port, "erin@example.test", i) for i in range(LIMIT)]
    assert set(codes) == {250, 451}
    assert 2 <= codes.count(250) <= 2 * (LIMIT // 6), codes  # each worker's sixth, not a refusal of all mail
    assert relay.metric("smtp_relay_limits_share") == 6
    assert relay.metric("smtp_relay_limits_fallback") >= 1  # the workers that decided: both, or all that got mail
    log = relay.log.read_text()
    assert "the credentials of spec.limits.redis.secretName were refused" in log
    assert "pw-1" not in log and "another-password" not in log
