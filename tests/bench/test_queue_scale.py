"""bench/queue_scale --quick: a real relay queues 20,000 messages behind a refusing upstream, survives kill -9
with all of them, and drains them into smtp-sink once it is up; the report has every figure and verdict."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()), reason="make peers")
def test_queue_scale_quick_run_reports_memory_recovery_and_drain() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.queue_scale", "--quick", "--postfix-messages", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = re.findall(r"^\s+([\d,]+)\s+(\d+)\s+(\d+)\s+-$", out, re.MULTILINE)
    assert [int(r[0].replace(",", "")) for r in rows] == [10_000, 20_000], out
    assert all(0 < int(r[1]) < 300 for r in rows), out  # RSS in MiB at each checkpoint
    drained = re.search(r"drain once the upstream is up: ([\d,]+) messages in ([\d.]+) s", out)
    assert drained and int(drained.group(1).replace(",", "")) >= 20_000, out
    recovery = re.search(r"recovery after kill -9: ([\d.]+) s until /queue reports 20,000", out)
    assert recovery and float(recovery.group(1)) < 60, out
    assert len(re.findall(r" (?:PASS|MISS)\b", out)) == 3, out
