"""The figures of bench/operator_scale: what is measured of each process (/proc), the result, the report.

Kept apart from the run (operator_scale.py): the run starts processes and drives the API, this module only counts
and words what it saw.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_P50_MS = 300.0
TARGET_IDLE_PCT = 5.0
TARGET_RSS_MB = 300.0


# --- /proc accounting ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (the operator and the emulator do not fork)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the kernel's own peak RSS, so no sampling can miss a spike) in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Settings:
    count: int
    replicas: int
    concurrency: int
    rate: float | None
    idle: float
    timeout: float
    settle_max: float
    keep: bool
    first_resyncs_max: float = 0.0


@dataclass
class Result:
    settings: Settings
    rss_start_kib: int = 0
    latencies: list[float] = field(default_factory=list)
    create_rtts: list[float] = field(default_factory=list)
    created: int = 0
    complete: int = 0
    expired: int = 0
    create_seconds: float = 0.0
    all_children_seconds: float = 0.0
    settle_seconds: float = 0.0
    busy_cpu: float = 0.0
    busy_emulator_cpu: float = 0.0
    busy_wall: float = 0.0
    requests: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    idle_pct: float = 0.0
    idle_emulator_pct: float = 0.0
    idle_requests: int = 0
    idle_by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    transient_wall: float = 0.0
    transient_pct: float = 0.0
    transient_status_writes: int = 0
    rated: int = 0
    """Relays whose status.queue had its rates (two resyncs done) before the idle window."""
    idle_wall: float = 0.0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    emulator_rss_peak_kib: int = 0
    operator_errors: int = 0
    pods_answering: int = 0
    """Pods whose /queue the operator asked by the end (the responder's addresses that got a request)."""
    pod_requests: int = 0
    idle_pod_requests: int = 0
    idle_responder_pct: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The machine's 1-minute load average at the first create and at the end (other work shares the cores)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values; NaN when empty."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def report(r: Result) -> str:
    s = r.settings
    n = max(1, r.created)
    p50, p95 = percentile(r.latencies, 50) * 1000, percentile(r.latencies, 95) * 1000
    rss_mb = r.rss_peak_kib / 1024

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    rows = [
        ("create -> all 5 children, p50", f"{p50:.0f} ms", f"< {TARGET_P50_MS:.0f} ms", verdict(p50 < TARGET_P50_MS)),
        ("create -> all 5 children, p95", f"{p95:.0f} ms", "", ""),
        ("create -> all 5 children, max", f"{max(r.latencies, default=float('nan')) * 1000:.0f} ms", "", ""),
        ("operator API requests per SmtpRelay", f"{r.requests / n:.1f}", "", ""),
        (f"emulator CPU idle ({r.idle_wall:.0f} s)", f"{r.idle_emulator_pct:.2f} % of a core", "", ""),
        (
            f"operator CPU idle ({r.idle_wall:.0f} s)",
            f"{r.idle_pct:.2f} % of a core",
            f"< {TARGET_IDLE_PCT:.0f} %",
            verdict(r.idle_pct < TARGET_IDLE_PCT),
        ),
        ("operator peak RSS (VmHWM)", f"{rss_mb:.0f} MB", f"< {TARGET_RSS_MB:.0f} MB", verdict(rss_mb < TARGET_RSS_MB)),
    ]
    width = max(len(row[0]) for row in rows)
    lines = [
        f"operator_scale: {r.created}/{s.count} SmtpRelays of {s.replicas} pods created, {r.complete} with all "
        f"children; concurrency {s.concurrency}" + (f", paced at {s.rate:g}/s" if s.rate else ", unpaced"),
        f"load average {r.load[0]:.2f} at the first create, {r.load[1]:.2f} at the end, on {os.cpu_count()} cores "
        "(shared: other work slows the run down without showing in these shares)",
        "",
        f"{'metric':<{width}}  {'value':>18}  {'target':>9}  verdict",
        f"{'-' * width}  {'-' * 18}  {'-' * 9}  -------",
        *(f"{a:<{width}}  {b:>18}  {c:>9}  {d}".rstrip() for a, b, c, d in rows),
        "",
        "details:",
        f"  creates: {r.created} in {r.create_seconds:.1f} s ({r.created / max(r.create_seconds, 1e-9):.0f}/s), "
        f"POST round trip p50 {percentile(r.create_rtts, 50) * 1000:.0f} ms, "
        f"p95 {percentile(r.create_rtts, 95) * 1000:.0f} ms",
        f"  all children present {r.all_children_seconds:.1f} s after the first create; operator quiet "
        f"{r.settle_seconds:.1f} s later",
        f"  operator CPU while creating: {r.busy_cpu:.1f} s over {r.busy_wall:.1f} s "
        f"({100 * r.busy_cpu / max(r.busy_wall, 1e-9):.0f} % of a core, {1000 * r.busy_cpu / n:.1f} ms per SmtpRelay)",
        f"  emulator CPU while creating: {r.busy_emulator_cpu:.1f} s "
        f"({100 * r.busy_emulator_cpu / max(r.busy_wall, 1e-9):.0f} % of a core)",
        f"  first resyncs, before the idle window: {r.rated}/{r.created} relays had status.queue with rates after "
        f"{r.transient_wall:.0f} s; {r.transient_status_writes} status writes, "
        f"operator {r.transient_pct:.2f} % of a core",
        f"  idle window: {r.idle_requests} operator requests ({r.idle_requests / max(r.idle_wall, 1e-9):.1f}/s), "
        f"emulator {r.idle_emulator_pct:.2f} % of a core"
        + "".join(f"; {v} {k}" for k, v in sorted(r.idle_by_kind.items(), key=lambda i: -i[1])[:4] if v > 0),
        f"  operator RSS: {r.rss_start_kib / 1024:.0f} MB before the creates, "
        f"{r.rss_end_kib / 1024:.0f} MB at the end; "
        f"emulator peak {r.emulator_rss_peak_kib / 1024:.0f} MB",
        f"  pods (the responder): {r.pods_answering} of {r.created * s.replicas} asked for /queue, "
        f"{r.pod_requests} requests in all, {r.idle_pod_requests} in the idle window "
        f"({r.idle_pod_requests / max(r.idle_wall, 1e-9):.1f}/s); responder {r.idle_responder_pct:.2f} % of a core",
        f"  operator log: {r.operator_errors} error/traceback lines; bench watches restarted after 410: {r.expired}",
        "  operator requests per SmtpRelay by kind:",
    ]
    for kind, value in sorted(r.by_kind.items(), key=lambda i: -i[1]):
        if value:
            lines.append(f"    {value / n:6.2f}  {kind}")
    return "\n".join(lines)
