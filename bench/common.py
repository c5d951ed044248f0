"""What the benchmarks share: the error of a run that cannot be measured, and how `main` reports it."""

from __future__ import annotations

import sys
from collections.abc import Callable


class BenchError(RuntimeError):
    """A run that cannot be measured (a target or process did not start, refused or lost mail, children never
    appeared)."""


def print_report(run: Callable[[], str]) -> int:
    """Print the report `run` returns and exit status 0, or the reason it could not measure and 1."""
    try:
        print(run())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0
