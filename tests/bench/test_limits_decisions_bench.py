"""bench/limits_decisions: one short run against a real redis-server reports CPU and wall time per decision."""

from __future__ import annotations

import re
import sys

import pytest
from bench.limits_decisions import run
from bench.peers.redis import REDIS_SERVER

from tests.peers.daemon import skip_unless_installed

pytestmark = pytest.mark.peers


def test_a_short_run_reports_both_figures_per_session_count() -> None:
    skip_unless_installed(REDIS_SERVER)
    report = run({"relay": sys.executable}, rounds=1, sessions=[1, 3], decisions=30)
    rows = re.findall(r"^\s+(\d+) relay\s+(\d+)\s+(\d+)$", report, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 3], report
    assert all(int(cpu) > 0 and int(wall) >= int(cpu) * 0.5 for _, cpu, wall in rows), report
    assert "load average 1/5/15 min" in report
