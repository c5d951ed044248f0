"""What the benchmarks share: the error of a run that cannot be measured, and how `main` reports it."""

from __future__ import annotations

import asyncio
import signal
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


async def until_stopped() -> None:
    """Wait for SIGINT or SIGTERM: how the helper servers of the benches and tests (the pod responder, the relay
    cluster) run as programs until their parent stops them."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
