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
@pytest.mark.parametrize("down_during_drain", [False, True])
def test_scale_down_quick_run_loses_nothing(down_during_drain: bool) -> None:
    """With the upstream down from the scale-down until it completes, the drain can only finish by hand-off."""
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink is not installed (make peers)")
    command = [sys.executable, "-m", "bench.scale_down", "--quick"]
    command += ["--upstream-down-during-drain"] if down_during_drain else []
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    title, header, row, verdict = proc.stdout.splitlines()[:4]
    assert "load average" in title
    assert header.split() == ["run", "handoff", "accepted", "delivered", "lost", "duplicates", "stranded",
                              "scale-down", "s", "load", "s", "retried", "handed", "off", "upstream", "down", "at",
                              "shrink"]  # fmt: skip
    cells = row.split()
    assert cells[1] == "on"
    accepted, delivered, lost, _duplicates, stranded = (int(x) for x in cells[2:7])
    assert (accepted, delivered, lost, stranded) == (300, 300, 0, 0), proc.stdout
    if down_during_drain:
        assert int(cells[10]) > 0 and cells[11] == "yes", f"shrunk by hand-off with the upstream down:\n{proc.stdout}"
    assert verdict.endswith("PASS"), proc.stdout
