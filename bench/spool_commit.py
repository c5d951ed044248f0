"""Spool commit path: how long a 250 waits for the spool, per build, interleaved in one run.

    python -m bench.spool_commit --build NAME=PYTHON [--build ...] [--rounds N] [--seconds S] [--writers W]

Each build's Python (a venv with that build's `smtp_relay`, e.g. an older commit's worktree) runs the same
child: W concurrent writers commit 5 KB messages to a fresh `Spool` on this disk for S seconds, and each
committed message is finished 20 ms later (what a fast delivery does), so the journal, the index and segment
removal run beside the commits as in the relay. No SMTP, no sink: only the spool, so the figures show what the
spool itself adds to a 250 (`bench/relay_vs_postfix` measures the whole relay). Rounds alternate the builds'
order; medians over rounds are shown with the load average, which on a shared VM says how much to trust them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, print_report

CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path
from smtp_relay.model.envelope import Envelope
from smtp_relay.queue.spool.store import Spool

async def main(root: Path, seconds: float, writers: int, size: int) -> None:
    spool = Spool(root)
    await spool.open()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    data = b"x" * size
    end = loop.time() + seconds

    async def writer(w: int) -> None:
        while loop.time() < end:
            started = time.perf_counter()
            message = await spool.commit(Envelope("a@x.org", (f"r{w}@y.org",)), data)
            latencies.append(time.perf_counter() - started)
            loop.call_later(0.02, spool.finish, message)

    cpu = time.process_time()
    started = loop.time()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = loop.time() - started
    cpu = time.process_time() - cpu
    await asyncio.sleep(0.05)
    await spool.close()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({"commits": len(latencies), "rate": len(latencies) / elapsed, "cpu": cpu,
                      "p50": pick(0.5), "p99": pick(0.99), "max": latencies[-1]}))

asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
"""


@dataclass(frozen=True)
class Settings:
    builds: tuple[tuple[str, str], ...]
    rounds: int
    seconds: float
    writers: int
    size: int


@dataclass(frozen=True)
class Result:
    build: str
    commits: int
    rate: float
    cpu: float
    p50: float
    p99: float
    max: float


def run_child(name: str, python: str, settings: Settings, work: Path) -> Result:
    root = Path(tempfile.mkdtemp(prefix=f"spool-{name}-", dir=work))
    args = [python, "-c", CHILD, str(root / "queue"), str(settings.seconds), str(settings.writers), str(settings.size)]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=settings.seconds + 120)
    if done.returncode != 0:
        raise BenchError(f"build {name} ({python}) failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(name, int(got["commits"]), got["rate"], got["cpu"], got["p50"], got["p99"], got["max"])


def report(results: Sequence[Result], settings: Settings, loads: Sequence[float]) -> str:
    lines = [
        f"spool commit path: {settings.writers} writers, {settings.size} B, {settings.seconds:g} s per run, "
        f"{settings.rounds} round(s), medians; load average {min(loads):.2f}..{max(loads):.2f} (1 min)",
        "",
        f"{'build':<12} {'commits/s':>10} {'CPU ms/msg':>10} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}",
    ]
    medians: dict[str, tuple[float, float, float, float, float]] = {}
    for name, _ in settings.builds:
        runs = [r for r in results if r.build == name]
        row = (
            statistics.median(r.rate for r in runs),
            statistics.median(1000 * r.cpu / max(1, r.commits) for r in runs),
            statistics.median(r.p50 for r in runs) * 1e3,
            statistics.median(r.p99 for r in runs) * 1e3,
            statistics.median(r.max for r in runs) * 1e3,
        )
        medians[name] = row
        lines.append(f"{name:<12} {row[0]:>10.0f} {row[1]:>10.3f} {row[2]:>7.2f} {row[3]:>7.2f} {row[4]:>7.2f}")
    first = settings.builds[-1][0]
    for name, _ in settings.builds[:-1]:
        a, b = medians[first], medians[name]
        lines.append(
            f"{first} / {name}: commits/s {a[0] / b[0] - 1:+.1%}, CPU per commit {a[1] / b[1] - 1:+.1%}, "
            f"p50 {a[2] / b[2] - 1:+.1%}, p99 {a[3] / b[3] - 1:+.1%}"
        )
    return "\n".join(lines)


def run(settings: Settings) -> str:
    results: list[Result] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=os.environ.get("BENCH_DIR")) as work:
        for round_no in range(settings.rounds):
            order = settings.builds if round_no % 2 == 0 else settings.builds[::-1]
            for name, python in order:
                loads.append(os.getloadavg()[0])
                result = run_child(name, python, settings, Path(work))
                results.append(result)
                print(
                    f"round {round_no + 1} {name:<12} {result.rate:>7.0f} commits/s  p50 {result.p50 * 1e3:6.2f} ms"
                    f"  p99 {result.p99 * 1e3:6.2f} ms  load {loads[-1]:.2f}",
                    flush=True,
                )
    return report(results, settings, loads)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.spool_commit", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--build", action="append", required=True, help="NAME=PYTHON: a build to measure (repeat; the last is compared)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--writers", type=int, default=20, help="concurrent committers (default 20)")
    parser.add_argument("--size", type=int, default=5120, help="message bytes (default 5120)")
    args = parser.parse_args(argv)
    builds = []
    for spec in args.build:
        name, sep, python = spec.partition("=")
        if not sep or not name or not python:
            parser.error(f"--build takes NAME=PYTHON, not {spec!r}")
        builds.append((name, python))
    return Settings(tuple(builds), max(1, args.rounds), args.seconds, max(1, args.writers), args.size)


def main(argv: Sequence[str] | None = None) -> int:
    return print_report(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
