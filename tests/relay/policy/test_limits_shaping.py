"""Fleet-wide shaping rates against a real redis-server: three `ShapingGate`s, each with its own Redis client
(three relay processes), pace one destination's messagesPerMinute together, hand out one line of places, and
fall back to a third of the rate each when Redis is killed (the process test is
tests/relay/process/test_shaping_fleet.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
from bench.peers.redis import RedisServer
from prometheus_client import CollectorRegistry

from smtp_relay.config.shaping_spec import ShapingSpec
from smtp_relay.delivery.gate import ShapingGate
from smtp_relay.delivery.shaper import MAX_WAIT, Limits
from smtp_relay.model.envelope import Outcome, OutcomeKind
from smtp_relay.policy import limits_fleet
from smtp_relay.policy.limits_fleet import RedisHealth
from smtp_relay.policy.limits_redis import RedisLimits, RedisTarget
from smtp_relay.policy.limits_shaping import FleetPacing
from smtp_relay.telemetry.metrics import LimitsMetrics, counter_total

pytestmark = pytest.mark.peers

RATE = 600
"""messagesPerMinute of the destination: one admission every 0.1 s for the whole fleet."""
LIMITS = Limits.from_spec(ShapingSpec.model_validate({"maxConnections": 50, "messagesPerMinute": RATE}))
Gates = Callable[[RedisServer], list[ShapingGate]]


@pytest.fixture(autouse=True)
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_fleet, "PROBE_INTERVAL", 0.1)


@pytest.fixture
async def gates() -> AsyncIterator[Gates]:
    """`gates(redis)`: three gates of three processes of one SmtpRelay (replicas 3), each its own client."""
    made: list[RedisHealth] = []

    def make(server: RedisServer) -> list[ShapingGate]:
        result = []
        for _ in range(3):
            target = RedisTarget(server.address, timeout=2.0)  # a loaded CI machine must not fall back
            health = RedisHealth(RedisLimits(target, "default", "relay"), 3, LimitsMetrics(CollectorRegistry()))
            made.append(health)
            gate = ShapingGate(None)
            pacing = FleetPacing(health)
            gate.pacing_source = lambda pacing=pacing: pacing
            result.append(gate)
        return result

    yield make
    for health in made:
        await health.close()


def _health(gate: ShapingGate) -> RedisHealth:
    pacing = gate.pacing_source()
    assert isinstance(pacing, FleetPacing)
    return pacing.health


async def _offer(gates: list[ShapingGate], seconds: float) -> tuple[list[float], list[float]]:
    """Every 20 ms each gate offers a message to the destination (a backlog far above its rate) for
    `seconds`: the times transactions started, and the places the held ones were given."""
    started: list[float] = []
    places: list[float] = []

    async def transaction() -> dict[str, Outcome]:
        started.append(time.time())
        return {"r@x.test": Outcome.delivered("sink")}

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        results = await asyncio.gather(*(g.run("routes[0]", LIMITS, ["r@x.test"], transaction) for g in gates))
        places += [r["r@x.test"].not_before for r in results if r["r@x.test"].kind is OutcomeKind.SHAPED]
        await asyncio.sleep(0.02)
    await asyncio.sleep(MAX_WAIT + 0.05)  # admissions still waiting for their due time start
    return started, places


def _most_in_any(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + window) for i, start in enumerate(ordered))


async def test_three_processes_pace_one_rate_and_one_line(redis_server: RedisServer, gates: Gates) -> None:
    fleet = gates(redis_server)
    started, places = await _offer(fleet, 2.0)
    # 2 s at one every 0.1 s: ~21 for the fleet (per process pacing would let ~63 through)
    assert 18 <= len(started) <= 22, len(started)
    assert _most_in_any(started, 1.0) <= RATE // 60 + 1, sorted(started)  # jitter of the local start: one more
    # the held ones got distinct places in one line, one interval apart, whichever process held them
    line = sorted(places)
    assert len(line) > 100
    assert (line[-1] - line[0]) / (len(line) - 1) >= 0.1 - 0.002  # one line for the fleet, in Redis's clock
    # each place is turned into this process's clock when its answer arrives: a few ms of jitter, no more
    assert min(b - a for a, b in itertools.pairwise(line)) >= 0.05
    for gate in fleet:
        assert counter_total(_health(gate).metrics.shaping_decisions) >= 20
        assert _health(gate).metrics.shaping_decisions.labels(backend="local")._value.get() == 0
    keys = sorted(k.decode() for k in redis_server.client().keys("relayfleet:{default/relay}:shape:*"))
    assert keys == [
        "relayfleet:{default/relay}:shape:routes[0]:line",
        "relayfleet:{default/relay}:shape:routes[0]:r100000",
    ]
    ttl = redis_server.client().pttl("relayfleet:{default/relay}:shape:routes[0]:r100000")
    assert 0 < ttl <= 1200  # gone a second after the rate's last admission: idle destinations cost nothing


async def test_a_killed_redis_leaves_each_process_a_third_of_the_rate(
    redis_server: RedisServer, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = gates(redis_server)
    await _offer(fleet, 0.3)
    redis_server.kill()
    with caplog.at_level(logging.WARNING, "smtp_relay.policy.limits_fleet"):
        started, _ = await _offer(fleet, 3.0)
    # each process one every 0.3 s: ~11 each, ~33 for the fleet, never more than the fleet's rate
    assert 27 <= len(started) <= 34, len(started)
    assert _most_in_any(started, 1.0) <= RATE // 60 + 3, sorted(started)  # three unsynchronised processes
    lines = [r.getMessage() for r in caplog.records]
    assert sum("falling back to local limits, each divided by 3" in line for line in lines) == 3  # once each
    for gate in fleet:
        health = _health(gate)
        assert not health.up and health.metrics.fallback._value.get() == 1
        assert health.metrics.shaping_decisions.labels(backend="local")._value.get() >= 9

    redis_server.start()
    for gate in fleet:
        while not _health(gate).up:  # noqa: ASYNC110 - the flag is the state under test, set by the probe
            await asyncio.sleep(0.05)
    started, _ = await _offer(fleet, 1.0)
    assert 8 <= len(started) <= 12, len(started)  # fleet-wide again
