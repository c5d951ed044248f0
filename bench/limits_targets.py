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
import statistics
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from bench.common import BenchError
from bench.peers.redis import REDIS_SERVER, RedisServer


class RunFigures(Protocol):
    """What the cost lines read of one load run (bench.relay_vs_postfix.Run)."""

    @property
    def target(self) -> str: ...
    @property
    def per_session(self) -> int: ...
    @property
    def accepted_rate(self) -> float: ...
    @property
    def e2e_rate(self) -> float: ...
    @property
    def per_cpu_second(self) -> float: ...


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


Figure = Callable[[RunFigures], float]


def _paired(runs: Sequence[RunFigures], per_session: int, target: str, reference: str, value: Figure) -> float:
    """Median over rounds of target / reference within the same round: on a machine whose load drifts between
    rounds, a pair run back to back shares its conditions far more than two medians over all rounds do."""
    ours = [r for r in runs if r.target == target and r.per_session == per_session]
    theirs = [r for r in runs if r.target == reference and r.per_session == per_session]
    ratios = [value(a) / value(b) for a, b in zip(ours, theirs, strict=False) if value(b)]
    return statistics.median(ratios) if ratios else float("nan")


def redis_cost_lines(per_session: int, medians: dict[str, list[float]], runs: Sequence[RunFigures]) -> list[str]:
    """--limits redis: what counting the limits in Redis costs against the same limits counted locally
    (accepted/s, e2e/s, messages per CPU second), for this build and, with --baseline-relay, the baseline's;
    then relay+redis against baseline+redis; each also as the median of the rounds' paired ratios."""
    lines = []
    rates: list[tuple[str, Figure]] = [
        ("accepted", lambda r: r.accepted_rate),
        ("e2e", lambda r: r.e2e_rate),
        ("msg/CPU-s", lambda r: r.per_cpu_second),
    ]
    for target, reference in (("relay+redis", "relay"), ("baseline+redis", "relay"), ("relay+redis", "baseline+redis")):
        if target in medians and reference in medians:
            paired = ", ".join(
                f"{name} {_paired(runs, per_session, target, reference, value) - 1:+.1%}" for name, value in rates
            )
            lines.append(f"{per_session:>9} {'paired':<9} {target} / {reference} per round, median: {paired}")
    for shared_name, label in (("relay+redis", "redis"), ("baseline+redis", "redis-old")):
        if "relay" in medians and shared_name in medians:
            local, shared = medians["relay"], medians[shared_name]
            lines.append(
                f"{per_session:>9} {label:<9} {1 - shared[0] / local[0]:>+9.1%}  {1 - shared[1] / local[1]:>+7.1%}  "
                f"{'':>7} {1 - shared[3] / local[3]:>+8.1%}    ({shared_name} / relay: what counting the limits in"
                " Redis costs: target <= 10%)"
            )
    if "relay+redis" in medians and "baseline+redis" in medians:
        now, before = medians["relay+redis"], medians["baseline+redis"]
        lines.append(
            f"{per_session:>9} {'change':<9} {now[0] / before[0] - 1:>+9.1%}  {now[1] / before[1] - 1:>+7.1%}  "
            f"{'':>7} {now[3] / before[3] - 1:>+8.1%}    (relay+redis against baseline+redis)"
        )
    return lines
