"""Waiting for a condition by polling it: the one helper every suite uses instead of fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy and return that; fail naming the check after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s: {check.__doc__ or check}")
        time.sleep(interval)
