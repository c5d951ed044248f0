"""What one fleet-wide rate-limit decision costs the relay process: CPU and wall time per decision.

`FleetRateLimiter.count` (two limits per message, as `bench.relay_vs_postfix --limits redis` sets them)
against a loopback redis-server, from 1, 4 and 20 concurrent sessions, in a child process per build:
`--baseline-python` names another worktree's venv Python (its own smtp_relay), and the builds run
interleaved, alternating order each round, so both see the same machine. The child's code uses only the
API both builds share. Unlike the end-to-end benchmark this leaves out the SMTP sessions, so the figure is
the limits' own client cost; the machine's load is printed with it (a shared VM is noisy).

    python -m bench.limits_decisions --baseline-python /work/wt/base/.venv/bin/python --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchError, print_report
from bench.peers.redis import RedisServer

CHILD = """
import asyncio, json, sys, time
from prometheus_client import CollectorRegistry
from smtp_relay.config.policy_spec import RateLimit
from smtp_relay.policy.limits_fleet import FleetRateLimiter, RedisHealth
from smtp_relay.policy.limits_redis import RedisLimits, RedisTarget
from smtp_relay.policy.ratelimit import RateLimiter, divided
from smtp_relay.telemetry.metrics import LimitsMetrics

address, sessions, decisions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
limits = [RateLimit(key="client", limit=10**9, per="1m"), RateLimit(key="sender", limit=10**9, per="1m")]

async def main():
    target = RedisTarget(address, timeout=2.0)
    health = RedisHealth(RedisLimits(target, "bench", "relay"), 1, LimitsMetrics(CollectorRegistry()))
    limiter = FleetRateLimiter(limits, health, RateLimiter(divided(limits, 1)))
    assert await limiter.count("127.0.0.1", None, "warm@x.test") is None

    async def session(i):
        for _ in range(decisions // sessions):
            await limiter.count("127.0.0.1", None, f"s{i}@x.test")
            await asyncio.sleep(0)  # the rest of a session's work between two messages

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert health.up, "fell back: the figure would be the local limiter's"
    await health.close()
    n = decisions // sessions * sessions
    print(json.dumps({"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}))

asyncio.run(main())
"""


def measure(python: str, address: str, sessions: int, decisions: int) -> dict[str, float]:
    done = subprocess.run(
        [python, "-c", CHILD, address, str(sessions), str(decisions)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise BenchError(f"{python} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(builds: dict[str, str], rounds: int, sessions: Sequence[int], decisions: int) -> str:
    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = RedisServer(folder)
    load_before = os.getloadavg()
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        server.start()
        names = list(builds)
        for round_no in range(rounds):
            for count in sessions:
                for name in names if round_no % 2 == 0 else names[::-1]:
                    figures = measure(builds[name], server.address, count, decisions)
                    results.setdefault((name, count), []).append(figures)
                    print(f"round {round_no + 1} {name:<9} {count:>3} sessions: {figures}", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"fleet-wide rate-limit decisions: 2 limits each, loopback redis-server, {decisions} per run, "
        f"{rounds} round(s), medians",
        "",
        f"{'sessions':>8} {'build':<9} {'CPU us/decision':>15} {'wall us/decision':>16}",
    ]
    for count in sessions:
        medians = {}
        for name in builds:
            runs = results[(name, count)]
            medians[name] = [statistics.median(r[k] for r in runs) for k in ("cpu_us", "wall_us")]
            lines.append(f"{count:>8} {name:<9} {medians[name][0]:>15.0f} {medians[name][1]:>16.0f}")
        if "baseline" in medians:
            now, before = medians["relay"], medians["baseline"]
            lines.append(f"{count:>8} {'change':<9} {now[0] / before[0] - 1:>+15.0%} {now[1] / before[1] - 1:>+16.0%}")
    load = " / ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    lines += ["", f"load average 1/5/15 min, start -> end: {load} ({os.cpu_count()} CPUs, shared: figures are noisy)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits_decisions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-python", default=None, help="another build's venv Python: measured as 'baseline'")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; medians are shown)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 20], help="concurrent sessions")
    parser.add_argument("--decisions", type=int, default=4000, help="decisions per run (default 4000)")
    args = parser.parse_args(argv)
    builds = {"relay": sys.executable}
    if args.baseline_python:
        builds = {"baseline": args.baseline_python, **builds}
    return print_report(lambda: run(builds, args.rounds, args.sessions, args.decisions))


if __name__ == "__main__":
    sys.exit(main())
