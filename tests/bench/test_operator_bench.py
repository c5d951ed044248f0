"""Smoke test of bench/operator_scale: the quick run completes and prints its table (no figure thresholds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_operator_scale_quick_run_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.operator_scale", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "50/50 SmtpRelays of 3 pods created, 50 with all children" in out
    for line in (
        "create -> all 5 children, p50",
        "create -> all 5 children, p95",
        "operator API requests per SmtpRelay",
        "operator CPU idle",
        "emulator CPU idle",
        "pods (the responder): ",
        "operator peak RSS (VmHWM)",
    ):
        assert line in out, out
    verdicts = [row.split()[-1] for row in out.splitlines() if "< " in row]
    assert len(verdicts) == 3 and set(verdicts) <= {"PASS", "MISS"}, out
