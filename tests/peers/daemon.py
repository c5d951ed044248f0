"""What the tests' peer daemons (clamd, spamd, rspamd, nsd) share: a free port, stopping, the start-up wait.

Each peer runs in the foreground as a child process on a port the kernel just handed out, writes its log
into a private folder and is ready once its own ping answers. A port probed free may be taken by another
process before the daemon binds it; the daemon then exits at once, and `start_retrying` tries a fresh port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest

D = TypeVar("D")
DaemonT = TypeVar("DaemonT", bound="Daemon")


@dataclass
class Daemon:
    """A running peer daemon: its address, its log file in `folder` and its (foreground) process."""

    name: ClassVar[str]
    """The program's name, for error messages."""
    log_file: ClassVar[str]
    """The log's path relative to `folder`."""
    stop_timeout: ClassVar[float] = 10.0
    """How long `stop` waits after SIGTERM before it kills."""
    log_tail: ClassVar[int] = 2000
    """How many characters of the log's end a start-up error carries (0: the whole log)."""

    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def address(self) -> str:
        """host:port, as the relay's specs take it (VirusSpec.address, SpamSpec.address, DnsSpec.nameservers)."""
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        path = self.folder / self.log_file
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the daemon, and with it its children (idempotent)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until_ready(daemon: Daemon, ping: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll `ping` every `interval` seconds until it answers True.

    Raises TimeoutError (after stopping the daemon) when it is not ready within `timeout` seconds, and
    RuntimeError when the daemon exits meanwhile; both carry the tail of the daemon's log.
    """
    deadline = time.monotonic() + timeout
    while not ping():
        if time.monotonic() > deadline:
            daemon.stop()
            raise TimeoutError(f"{daemon.address} not ready in {timeout}s: {daemon.log()[-daemon.log_tail :]}")
        if daemon.process.poll() is not None:
            raise RuntimeError(
                f"{daemon.name} on {daemon.address} (exit {daemon.process.returncode}): "
                f"{daemon.log()[-daemon.log_tail :]}"
            )
        time.sleep(interval)


def start_retrying(
    name: str,
    start_once: Callable[[], D],
    attempts: int = 3,
    retry_on: tuple[type[Exception], ...] = (RuntimeError,),
) -> D:
    """`start_once()`, again on failure (it probes a fresh port each time): up to `attempts` tries."""
    error: Exception | None = None
    for _ in range(attempts):
        try:
            return start_once()
        except retry_on as exc:
            error = exc
    raise RuntimeError(f"{name} did not start: {error}")


def skip_unless_installed(program: str) -> None:
    """Skip the test when the peer's program is missing."""
    if not os.access(program, os.X_OK):
        pytest.skip(f"{Path(program).name} is not installed (make test installs the Debian peers)")


@contextlib.contextmanager
def running(program: str, start: Callable[[Path], DaemonT]) -> Iterator[DaemonT]:
    """`start(folder)` the peer in a fresh private folder; stop it and remove the folder on exit.

    Not pytest's tmp_path: its 0700 root-owned parents are closed to the users the daemons switch to.
    """
    skip_unless_installed(program)
    folder = Path(tempfile.mkdtemp(prefix=f"relayfleet-{Path(program).name}-"))
    server = start(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
