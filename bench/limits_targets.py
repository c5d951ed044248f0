"""`--limits redis` of bench.relay_vs_postfix: what fleet-wide limits cost the relay.

Target "relay" then carries rate limits per client and per sender counted locally (`spec.limits.backend:
local`), and target "relay+redis" the same limits counted in a loopback redis-server started for the run
(`backend: redis`), so the two differ only in where each message is counted. The limits are far above
what a run sends, so nothing is refused; after the runs the relay's /metrics must show that its
decisions were taken in Redis and that it never fell back, or the figure would mean nothing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

from bench.common import BenchError
from bench.peers.redis import REDIS_SERVER, RedisServer

NEVER_REACHED = 1_000_000_000
"""Messages per minute of the benchmark's limits: counted, never refused."""
_SAMPLE = re.compile(r'^(smtp_relay_limits_[a-z_]+?)(?:\{backend="([a-z]+)"\})? ([0-9.e+]+)$', re.M)


def rate_limits() -> list[dict[str, object]]:
    """Two limits for every message, as a platform team would set them: per client and per sender."""
    return [
        {"key": "client", "limit": NEVER_REACHED, "per": "1m"},
        {"key": "sender", "limit": NEVER_REACHED, "per": "1m"},
    ]


def limits_spec(redis_address: str | None) -> dict[str, object]:
    if redis_address is None:
        return {"backend": "local"}
    # 2 s, not the default 250 ms: on a shared VM under load a starved redis-server can miss 250 ms, and a
    # decision that falls back would measure the fallback (the run fails if any does), not Redis.
    return {"backend": "redis", "redis": {"address": redis_address, "timeout": "2s"}}


class BenchRedis:
    """A redis-server on a loopback port for the run, in a folder of its own."""

    def __init__(self) -> None:
        if not shutil.which("redis-server") and not Path(REDIS_SERVER).exists():
            raise BenchError("--limits redis needs redis-server: run `make peers` (bash .ci/install-peers.sh)")
        self.folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.server = RedisServer(self.folder)

    @property
    def address(self) -> str:
        return self.server.address

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def check_decided_in_redis(http_port: int) -> float:
    """The relay's decisions taken in Redis; BenchError if it fell back or took none there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        raise BenchError(f"relay metrics unreadable: {exc}") from None
    samples = {(name, backend or ""): float(value) for name, backend, value in _SAMPLE.findall(text)}
    in_redis = samples.get(("smtp_relay_limits_decisions_total", "redis"), 0.0)
    if samples.get(("smtp_relay_limits_fallbacks_total", ""), 0.0) or not in_redis:
        raise BenchError(f"relay+redis did not count in Redis (it fell back, or took no decision there): {samples}")
    return in_redis
