"""Smoke test of bench/scale_down: the quick run scales a fleet of real relays 3 -> 1 under load and meets its
target (lost 0, stranded 0), printing the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.peers.smtp_sink import SMTP_SINK

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.e2e
def test_scale_down_quick_run_loses_nothing() -> None:
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink is not installed (make peers)")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale_down", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header, row, verdict = proc.stdout.splitlines()[1:4]
    assert header.split() == ["run", "accepted", "delivered", "lost", "duplicates", "stranded", "scale-down", "s",
                              "load", "s", "retried"]  # fmt: skip
    accepted, delivered, lost, _duplicates, stranded = (int(x) for x in row.split()[1:6])
    assert (accepted, delivered, lost, stranded) == (300, 300, 0, 0), proc.stdout
    assert verdict.endswith("PASS"), proc.stdout
