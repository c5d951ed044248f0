"""Test peer fixtures: swaks, the SMTP Swiss army knife, as an independent client.

Run asynchronously (asyncio subprocess) because the server under test usually lives in the test's own
event loop: a blocking subprocess call would deadlock it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"


@dataclass(frozen=True)
class SwaksResult:
    code: int
    """swaks' exit code: 0 delivered; 23-29 an SMTP stage failed (see swaks(1))."""
    transcript: str
    """stdout and stderr: the whole dialogue, client lines `->`, server lines `<-`."""


async def run_swaks(host: str, port: int, *args: str, seconds: float = 30.0) -> SwaksResult:
    """Run `swaks --server host:port ARGS`, returning the exit code and the transcript."""
    proc = await asyncio.create_subprocess_exec(
        SWAKS,
        "--server",
        f"{host}:{port}",
        "--timeout",
        "15",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return SwaksResult(proc.returncode, out.decode("utf-8", "replace"))


Swaks = Callable[..., Awaitable[SwaksResult]]


@pytest.fixture
def swaks() -> Swaks:
    """`await swaks(port, *args)` against 127.0.0.1; skips when swaks is not installed."""
    if not shutil.which(SWAKS):
        pytest.skip("swaks is not installed (make test installs it)")

    async def _run(port: int, *args: str, host: str = "127.0.0.1", seconds: float = 30.0) -> SwaksResult:
        return await run_swaks(host, port, *args, seconds=seconds)

    return _run
