"""Fleet-wide limits against a real redis-server: shared counts, namespacing, the AUTH throttle, the
fallback when Redis is killed, hung or refuses the password, and the way back.

Several `RedisLimits` clients on one Redis stand for several relay processes (the end-to-end test with
three relay processes is tests/relay/process/test_fleet_limits.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import dns.asyncresolver
import pytest
from bench.peers.redis import RedisServer, RedisTls
from prometheus_client import CollectorRegistry

from smtp_relay.config.manifest import SecretData, parse_spec
from smtp_relay.config.policy_spec import RateLimit
from smtp_relay.config.resolved import RelayConfig, resolve
from smtp_relay.model.envelope import Envelope
from smtp_relay.policy import limits_fleet
from smtp_relay.policy.checks.content import count_message
from smtp_relay.policy.engine import PolicyEngine
from smtp_relay.policy.limits_fleet import FleetAuthThrottle, FleetRateLimiter, RedisHealth
from smtp_relay.policy.limits_redis import RedisLimits, RedisTarget
from smtp_relay.policy.limits_shaping import FleetPacing
from smtp_relay.policy.metrics import PolicyMetrics
from smtp_relay.policy.ratelimit import AuthThrottle, RateLimiter, divided
from smtp_relay.telemetry.metrics import LimitsMetrics
from tests.peers.tls import IssuedCert, ThrowawayCA
from tests.relay.policy.transactions import facts

pytestmark = pytest.mark.peers

LIMITS = [RateLimit(key="sender", limit=6, per="1m")]
Fleet = Callable[..., FleetRateLimiter]


@pytest.fixture(autouse=True)
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_fleet, "PROBE_INTERVAL", 0.1)


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """`fleet(redis, processes=3, relay="default/relay", password=None)`: one relay process's limiter.

    Its timeout is long (2 s) unless a test is about timeouts: a loaded CI machine must not fall back.
    """
    made: list[RedisHealth] = []

    def make(
        server: RedisServer,
        processes: int = 3,
        relay: str = "default/relay",
        password: str | None = None,
        limits: list[RateLimit] = LIMITS,
        timeout: float = 2.0,
    ) -> FleetRateLimiter:
        namespace, name = relay.split("/")
        target = RedisTarget(server.address, password=password or "", timeout=timeout)
        health = RedisHealth(RedisLimits(target, namespace, name), processes, LimitsMetrics(CollectorRegistry()))
        made.append(health)
        return FleetRateLimiter(limits, health, RateLimiter(divided(limits, processes)))

    yield make
    for health in made:
        await health.close()


async def until_up(health: RedisHealth) -> None:
    """Poll, as an operator watching the gauge would, until the background probe found Redis again."""
    while not health.up:  # noqa: ASYNC110 - the flag is the state under test, set by the relay's own probe
        await asyncio.sleep(0.05)


async def accepted(limiter: FleetRateLimiter, sender: str, attempts: int) -> int:
    return sum([await limiter.count("192.0.2.1", None, sender) is None for _ in range(attempts)])


async def test_processes_share_one_limit_and_relays_do_not_mix(redis_server: RedisServer, fleet: Fleet) -> None:
    pods = [fleet(redis_server) for _ in range(3)]
    counts = [await accepted(pod, "a@x.test", 4) for pod in pods]
    assert sum(counts) == 6 and counts == [4, 2, 0]  # one limit of 6 for the three, whoever receives
    refused = await pods[2].count("192.0.2.1", None, "a@x.test")
    assert refused is not None and refused.reply.startswith("451 4.7.1 Rate limit exceeded for sender (6 per 1m)")
    assert pods[2].check("192.0.2.1", None, "a@x.test") == refused  # MAIL refuses early what Redis refused
    assert pods[0].check("192.0.2.1", None, "a@x.test") is None  # a pod that saw no refusal asks at DATA
    assert await accepted(pods[0], "b@x.test", 6) == 6  # another sender has its own count
    other = fleet(redis_server, relay="mail/other")
    assert await accepted(other, "a@x.test", 6) == 6  # another SmtpRelay on the same Redis: its own keys
    keys = {key.decode() for key in redis_server.client().keys("*")}
    assert any(key.startswith("relayfleet:{default/relay}:rl:sender:60000:6:a@x.test:") for key in keys), keys
    assert any(key.startswith("relayfleet:{mail/other}:") for key in keys), keys
    assert all(0 < redis_server.client().pttl(key) <= 120_000 for key in keys)  # expire after two windows


async def test_several_limits_count_only_when_all_have_room(redis_server: RedisServer, fleet: Fleet) -> None:
    limits = [RateLimit(key="client", limit=5, per="1h"), RateLimit(key="sender", limit=3, per="1m")]
    pod = fleet(redis_server, limits=limits)
    assert await accepted(pod, "a@x.test", 4) == 3  # the sender's limit
    assert await accepted(pod, "b@x.test", 4) == 2  # the client's: a's refused 4th message was not counted


async def test_killed_redis_falls_back_to_a_share_then_comes_back(
    redis_server: RedisServer, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    pod = fleet(redis_server, processes=3)
    metrics = pod.health.metrics
    assert await accepted(pod, "a@x.test", 1) == 1
    redis_server.kill()
    with caplog.at_level(logging.WARNING, "smtp_relay.policy.limits_fleet"):
        started = time.monotonic()
        counts = await accepted(pod, "c@x.test", 5)
        assert time.monotonic() - started < 1.0  # refused connections: no session waits for Redis
    assert counts == 2  # 6 // 3 processes
    assert pod.health.up is False and metrics.fallback._value.get() == 1
    assert metrics.decisions.labels(backend="local")._value.get() == 5
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"Redis at {redis_server.address} unavailable" in lines[0]
    assert "divided by 3" in lines[0]
    redis_server.start()
    await asyncio.wait_for(until_up(pod.health), 5)
    assert pod.health.up and metrics.fallback._value.get() == 0 and metrics.fallbacks._value.get() == 1
    assert await accepted(pod, "c@x.test", 7) == 6  # fleet-wide again (a fresh Redis: nothing counted yet)


async def test_a_hung_redis_costs_one_timeout_then_nothing(redis_server: RedisServer, fleet: Fleet) -> None:
    pod = fleet(redis_server, timeout=0.2)
    assert await accepted(pod, "a@x.test", 1) == 1
    assert redis_server._proc is not None
    os.kill(redis_server._proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert await pod.count("192.0.2.1", None, "a@x.test") is None  # decided locally after the timeout
        first = time.monotonic() - started
        started = time.monotonic()
        assert await pod.count("192.0.2.1", None, "a@x.test") is None
        second = time.monotonic() - started
    finally:
        os.kill(redis_server._proc.pid, signal.SIGCONT)
    assert 0.15 < first < 0.6  # the 200 ms timeout, not the default socket wait
    assert second < 0.05  # while down, decisions do not wait for Redis at all
    assert not pod.health.up


async def test_a_wrong_password_is_logged_clearly_and_falls_back(
    redis_factory: Callable[..., RedisServer], fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory(password="right-password")
    good = fleet(server, password="right-password")
    assert await accepted(good, "a@x.test", 7) == 6
    bad = fleet(server, password="wrong-password")
    with caplog.at_level(logging.WARNING, "smtp_relay.policy.limits_fleet"):
        assert await accepted(bad, "a@x.test", 3) == 2  # its local share, not the exhausted fleet count
    (line,) = [r.getMessage() for r in caplog.records]
    assert "the credentials of spec.limits.redis.secretName were refused" in line, line
    assert "right-password" not in line and "wrong-password" not in line


async def test_the_auth_throttle_is_fleet_wide(redis_server: RedisServer) -> None:
    settings = AuthThrottle(max_failures=4, delay_after=1, window=600, cooldown=900, max_delay=3)
    registry = CollectorRegistry()
    healths = [
        RedisHealth(
            RedisLimits(RedisTarget(redis_server.address, timeout=2.0), "default", "relay"), 2, LimitsMetrics(r)
        )
        for r in (registry, CollectorRegistry())
    ]
    pods = [FleetAuthThrottle(settings, health, AuthThrottle(max_failures=2)) for health in healths]
    try:
        replies = []
        for i in range(4):  # the guesses alternate between the two pods
            pod = pods[i % 2]
            assert await pod.refusal("192.0.2.7", reserve=True) is None
            verdict, delay = await pod.failed("192.0.2.7", "bob")
            replies.append((verdict.code, delay))
        assert replies == [(535, 0.0), (535, 1.0), (535, 2.0), (454, 3.0)]
        for pod in pods:  # blocked everywhere, for the cool-down
            refused = await pod.refusal("192.0.2.7", reserve=False)
            assert refused is not None and refused.reply.startswith("454 4.7.0")
        assert await pods[0].refusal("192.0.2.8", reserve=False) is None  # only that address
        # checks under way count: three reserved at once leave a fourth address with no attempt left
        for _ in range(4):
            assert await pods[1].refusal("192.0.2.9", reserve=True) is None
        assert await pods[0].refusal("192.0.2.9", reserve=True) is not None
        await pods[0].succeeded("192.0.2.9", "alice")
        assert await pods[0].refusal("192.0.2.9", reserve=True) is None
        # a login forgets only that username's failures from that address
        await pods[0].failed("192.0.2.9", "alice")
        await pods[0].failed("192.0.2.9", "mallory")
        await pods[1].succeeded("192.0.2.9", "alice")
        members = [
            m.decode().split(":", 1)[1]
            for m in redis_server.client().zrange("relayfleet:{default/relay}:auth:192.0.2.9:f", 0, -1)
        ]
        assert members == ["mallory"]
    finally:
        for health in healths:
            await health.close()


async def test_the_engine_swaps_backends_and_shares_on_reload(redis_server: RedisServer) -> None:
    """A reload that changes only spec.replicas keeps the Redis connection and its counts, with a new share;
    switching to backend local closes the connection."""
    registry = CollectorRegistry()

    def config(replicas: int, backend: str = "redis") -> RelayConfig:
        spec = parse_spec(
            {
                "replicas": replicas,
                "policy": {"rateLimits": [{"key": "client", "limit": 30, "per": "1m"}]},
                "limits": {"backend": backend, "redis": {"address": redis_server.address, "timeout": "2s"}},
            }
        )
        return RelayConfig(name="outbound", namespace="mail", spec=spec)

    engine = PolicyEngine(
        config(3), dns.asyncresolver.Resolver(configure=False), hostname="relay.test", metrics=PolicyMetrics(registry),
        workers=2,
    )  # fmt: skip
    fleet = engine.rate_limiter
    assert isinstance(fleet, FleetRateLimiter) and isinstance(engine.auth_limits, FleetAuthThrottle)
    assert registry.get_sample_value("smtp_relay_limits_share") == 6
    pacing = engine.pacing  # traffic shaping's rates: the same Redis, the same health and share
    assert isinstance(pacing, FleetPacing) and pacing.health is fleet.health and pacing.processes == 6
    envelope = Envelope(mail_from="a@x.test", rcpt_tos=["b@y.test"])
    assert await count_message(engine.rate_limiter, facts("192.0.2.1"), envelope) is None
    await engine.update(config(5))
    assert engine.rate_limiter is not fleet and isinstance(engine.rate_limiter, FleetRateLimiter)
    assert engine.rate_limiter.health is fleet.health  # same connection, the fleet's counts go on
    assert registry.get_sample_value("smtp_relay_limits_share") == 10
    assert engine.pacing is pacing and pacing.processes == 10
    inspector = redis_server.client()
    assert inspector.keys("relayfleet:{mail/outbound}:rl:client:*")
    assert len(inspector.client_list()) == 2  # the engine's connection and ours
    await engine.update(config(5, backend="local"))
    assert isinstance(engine.rate_limiter, RateLimiter) and engine.auth_limits is engine.auth_throttle
    assert engine.pacing is None  # shaping rates per process again
    assert [c["name"] for c in inspector.client_list()] == [""] and len(inspector.client_list()) == 1  # closed
    await engine.close()


async def test_concurrent_decisions_share_pipelines_and_stay_exact(redis_server: RedisServer, fleet: Fleet) -> None:
    pod = fleet(redis_server, limits=[RateLimit(key="sender", limit=30, per="1m")])
    wire = pod.health.redis.wire
    assert await pod.count("192.0.2.9", None, "z@x.test") is None  # connected
    redis_server.client().script_flush()  # the next decisions find the script unknown and send it in full
    writes = wire.writes
    verdicts = await asyncio.gather(*[pod.count("192.0.2.1", None, "a@x.test") for _ in range(50)])
    assert sum(v is None for v in verdicts) == 30  # exact under concurrency: each script is atomic
    assert wire.writes - writes <= 3, wire.writes - writes  # 50 sessions' decisions in a few writes


async def test_tls_with_the_ca_of_a_secret_and_an_acl_user(
    redis_factory: Callable[..., RedisServer], test_ca: ThrowawayCA, server_cert: IssuedCert
) -> None:
    tls = RedisTls(cert=server_cert.cert_path, key=server_cert.key_path, ca=test_ca.ca_path)
    server = redis_factory(tls=tls, username="relay", password="acl-pw")

    def pod(ca_pem: bytes | None, username: str = "relay") -> FleetRateLimiter:
        target = RedisTarget(server.address, True, username, "acl-pw", ca_pem, timeout=2.0)
        health = RedisHealth(RedisLimits(target, "default", "relay"), 3, LimitsMetrics(CollectorRegistry()))
        return FleetRateLimiter(LIMITS, health, RateLimiter(divided(LIMITS, 3)))

    trusted, unknown_ca, wrong_user = pod(test_ca.ca_pem), pod(None), pod(test_ca.ca_pem, username="default")
    try:
        assert await accepted(trusted, "a@x.test", 7) == 6 and trusted.health.up
        assert await accepted(unknown_ca, "a@x.test", 3) == 2 and not unknown_ca.health.up  # not verified: local
        assert await accepted(wrong_user, "a@x.test", 3) == 2 and not wrong_user.health.up  # ACL: default is off
    finally:
        for limiter in (trusted, unknown_ca, wrong_user):
            await limiter.health.close()

    # the same through a relay's config: the CA from spec.limits.redis.caSecret, the user from secretName
    redis_spec = {
        **{"address": server.address, "tls": True, "caSecret": "redis-ca", "secretName": "redis-auth"},
        "timeout": "2s",  # a TLS handshake on a loaded machine can take longer than the default 250ms
    }
    limits = {"backend": "redis", "redis": redis_spec}
    spec = parse_spec({"policy": {"rateLimits": [LIMITS[0].model_dump()]}, "limits": limits})
    mounted = {
        "redis-ca": SecretData("redis-ca", {"ca.crt": test_ca.ca_pem}),
        "redis-auth": SecretData("redis-auth", {"username": b"relay", "password": b"acl-pw"}),
    }
    registry = CollectorRegistry()
    engine = PolicyEngine(
        resolve("outbound", "mail", spec, mounted), dns.asyncresolver.Resolver(configure=False),
        hostname="relay.test", metrics=PolicyMetrics(registry),
    )  # fmt: skip
    envelope = Envelope(mail_from="b@x.test", rcpt_tos=["c@y.test"])
    verdicts = [await count_message(engine.rate_limiter, facts("192.0.2.1"), envelope) for _ in range(7)]
    assert [v is None for v in verdicts] == [True] * 6 + [False]
    assert registry.get_sample_value("smtp_relay_limits_decisions_total", {"backend": "redis"}) == 7
    await engine.close()
